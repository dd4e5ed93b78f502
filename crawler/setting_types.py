"""One setting's value checked against its declared type: Python values from config.toml
and spiders as they are, strings from the command line converted (`true`, `2.5`, `500,503`,
a JSON object for a table of headers). crawler.settings names the types; this checks them.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from typing import Any, Final, Literal

from crawler.errors import ConfigError

__all__ = ["convert", "hint_name"]


def hint_name(hint: Any) -> str:
    """Return a readable name of a setting's type, e.g. `int` or `list[int]`."""
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(value) for value in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint)) if not typing.get_args(hint) else str(hint)


def convert(name: str, hint: Any, value: object, source: str) -> object:
    """Check one value of setting `name` against its type `hint`, converting strings from
    the command line; raise one `ConfigError` line naming the setting and `source`."""
    from_text = isinstance(value, str) and source == "command line"
    wrong = ConfigError(f"{source}: setting {name!r} must be {hint_name(hint)}, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise wrong
        return value
    if origin is dict:
        return _headers(
            value, from_text=from_text, error=wrong, where=f"{source}: setting {name!r}"
        )
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if from_text:
            assert isinstance(value, str)
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise wrong
        return [_scalar(item_type, item, from_text=from_text, error=wrong) for item in value]
    return _scalar(hint, value, from_text=from_text, error=wrong)


def _scalar(hint: Any, value: object, *, from_text: bool, error: ConfigError) -> object:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.lower()]
        raise error
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise error from None
        raise error
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise error from None
        raise error
    if hint is str:
        if isinstance(value, str):
            return value
        raise error
    raise error  # pragma: no cover - every field type is handled above


def _headers(value: object, *, from_text: bool, error: ConfigError, where: str) -> dict[str, str]:
    """Check a table of header names and values (from the command line: a JSON object)."""
    if from_text:
        try:
            value = json.loads(str(value))
        except ValueError:
            raise error from None
    if not isinstance(value, Mapping):
        raise error
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a header name")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ConfigError(f"{where}: the value of {name!r} must be text on one line")
    return dict(value)


_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BOOLEAN_WORDS: Final = {
    "true": True,
    "1": True,
    "yes": True,
    "false": False,
    "0": False,
    "no": False,
}
