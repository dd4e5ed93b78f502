"""Checking a dataclass item's fields against their annotations (str, int, float, bool,
lists, tuples, dicts, optional fields, unions, literals, NewTypes and nested dataclasses),
converting a value where that loses nothing: "12.50" to 12.5 for a float, "3" to 3 for an
int, "true"/"false" for a bool; "12.50" is not an int and 3.5 is not an int.

`validate_item` returns the item (a converted copy when something changed) or `Invalid`,
naming the first bad field and every problem found.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import logging
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, Union, final

__all__ = ["Invalid", "validate_item"]

logger = logging.getLogger(__name__)

_INT: Final = re.compile(r"[+-]?\d+")
_FLOAT: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLS: Final = {"true": True, "false": False}
_SEQUENCES: Final = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS: Final = (dict, collections.abc.Mapping, collections.abc.MutableMapping)

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class Invalid:
    """Why an item was refused: the first bad field, and a message naming every problem."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class _Problems:
    """What did not fit, as (field path, message) pairs; what `_convert` returns on failure."""

    found: tuple[tuple[str, str], ...]


def _problem(where: str, message: str) -> _Problems:
    return _Problems(((where, message),))


def validate_item(item: T) -> T | Invalid:
    """Check a dataclass item's fields against their types, converting where lossless.

    Returns the item itself when nothing needed converting, a converted copy when something
    did (the original is not changed), or `Invalid`. Other items are returned unchanged.

    Example:
        ```python
        @dataclass
        class Book:
            title: str
            price: float

        validate_item(Book("Dune", "12.50"))   # Book(title="Dune", price=12.5)
        validate_item(Book("Dune", "£12.50"))  # Invalid(field="price", message=...)
        ```
    """
    if not dataclasses.is_dataclass(item) or isinstance(item, type):
        return item
    checked = _check_dataclass(item, "")
    if isinstance(checked, _Problems):
        message = "; ".join(f"{where}: {problem}" for where, problem in checked.found)
        return Invalid(field=checked.found[0][0], message=message)
    return checked


@functools.cache
def _field_types(cls: type) -> dict[str, Any] | None:
    """The resolved field annotations of a dataclass, or None (logged once) when they cannot
    be; resolved once per class."""
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # e.g. a name imported only under TYPE_CHECKING
        logger.warning(
            "item class %s: cannot resolve its field types (%s); its items are stored unchecked",
            cls.__qualname__,
            exc,
        )
        return None


def _check_dataclass(item: T, prefix: str) -> T | _Problems:
    cls: type = type(item)
    hints = _field_types(cls)
    if hints is None:
        return item
    changes: dict[str, object] = {}
    problems: list[tuple[str, str]] = []
    for spec in dataclasses.fields(item):  # type: ignore[arg-type]
        value = getattr(item, spec.name)
        converted = _convert(value, hints.get(spec.name, Any), prefix + spec.name)
        if isinstance(converted, _Problems):
            problems.extend(converted.found)
        elif converted is not value:
            changes[spec.name] = converted
    if problems:
        return _Problems(tuple(problems))
    if not changes:
        return item
    changed = copy.copy(item)
    for name, value in changes.items():
        object.__setattr__(changed, name, value)  # works for frozen dataclasses too
    return changed


def _convert(value: object, hint: Any, where: str) -> object:
    """Return `value` fitted to `hint` (the same object when it already fits) or `_Problems`."""
    if type(value) is hint and hint in _EXACT_FITS:  # the common case, decided at once
        return value
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return _convert_union(value, hint, where)
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        return _mismatch(value, hint, where)
    if hint is None or hint is type(None):
        return value if value is None else _mismatch(value, hint, where)
    if supertype := getattr(hint, "__supertype__", None):  # typing.NewType
        return _convert(value, supertype, where)
    if origin in _SEQUENCES or hint in _SEQUENCES or origin is tuple or hint is tuple:
        return _convert_sequence(value, hint, where)
    if origin in _MAPPINGS or hint in _MAPPINGS:
        return _convert_mapping(value, hint, where)
    if not isinstance(hint, type):
        return value  # TypeVars and other typing forms are not checked
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            return _mismatch(value, hint, where)
        return _check_dataclass(value, where + ".")
    converted = _convert_scalar(value, hint)
    if converted is _NO:
        return _mismatch(value, hint, where)
    return converted


_NO: Final = object()


def _convert_scalar(value: object, hint: type) -> object:
    """`value` as `hint` (str, int, float, bool; other classes by isinstance), or `_NO`."""
    text = value.strip() if isinstance(value, str) else None
    if hint is bool:
        if isinstance(value, bool):
            return value
        return _BOOLS.get(text.lower(), _NO) if text is not None else _NO
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(text) if text is not None and _INT.fullmatch(text) else _NO
    if hint is float:
        number: float | None = None
        if isinstance(value, float):
            number = value
        elif isinstance(value, int) and not isinstance(value, bool):
            try:  # no rounding of big ints, and none too large for a float at all
                number = float(value) if float(value) == value else None
            except OverflowError:
                number = None
        elif text is not None and _FLOAT.fullmatch(text):
            number = float(text)
        return number if number is not None and math.isfinite(number) else _NO
    return value if isinstance(value, hint) and not _is_bool_for_number(value, hint) else _NO


_EXACT_FITS: Final = frozenset({str, int, bool})
"""Types whose values need no check or conversion when they are exactly of that type (a float
still has to be finite)."""


def _is_bool_for_number(value: object, hint: type) -> bool:
    return isinstance(value, bool) and hint is not bool and issubclass(hint, int | float)


def _convert_union(value: object, hint: Any, where: str) -> object:
    members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if value is None and len(members) < len(typing.get_args(hint)):
        return None
    # A value that already has one of the types keeps it: "3" stays a str in `int | str`.
    for member in members:
        plain = typing.get_origin(member) or member
        fits = isinstance(plain, type) and isinstance(value, plain)
        if fits and not _is_bool_for_number(value, plain):
            return _convert(value, member, where)
    for member in members:
        converted = _convert(value, member, where)
        if not isinstance(converted, _Problems):
            return converted
    return _mismatch(value, hint, where)


def _convert_sequence(value: object, hint: Any, where: str) -> object:
    origin = typing.get_origin(hint) or hint
    if not isinstance(value, list | tuple):
        return _mismatch(value, hint, where)
    args = typing.get_args(hint)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            return _problem(where, f"expected {len(args)} values, got {len(value)}")
        element_hints: list[Any] = list(args)
    else:
        element_hints = [args[0] if args else Any] * len(value)
    converted: list[object] = []
    for index, (element, element_hint) in enumerate(zip(value, element_hints, strict=True)):
        fitted = _convert(element, element_hint, f"{where}[{index}]")
        if isinstance(fitted, _Problems):
            return fitted
        converted.append(fitted)
    if all(new is old for new, old in zip(converted, value, strict=True)):
        wanted_list = origin is not tuple
        if isinstance(value, list) == wanted_list:
            return value
    return converted if origin is not tuple else tuple(converted)


def _convert_mapping(value: object, hint: Any, where: str) -> object:
    if not isinstance(value, Mapping):
        return _mismatch(value, hint, where)
    args = typing.get_args(hint)
    value_hint: Any = args[1] if len(args) == 2 else Any
    converted: dict[str, object] = {}
    changed = not isinstance(value, dict)
    for key, element in value.items():
        if not isinstance(key, str):
            return _problem(where, f"keys must be strings (JSON objects), got {key!r}")
        fitted = _convert(element, value_hint, f"{where}[{key!r}]")
        if isinstance(fitted, _Problems):
            return fitted
        changed = changed or fitted is not element
        converted[key] = fitted
    return converted if changed else value


def _mismatch(value: object, hint: Any, where: str) -> _Problems:
    try:
        shown = repr(value)
    except (RecursionError, ValueError):  # nested too deep; an int too long to show
        shown = f"<{type(value).__name__}>"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return _problem(where, f"expected {_hint_name(hint)}, got {shown} ({type(value).__name__})")


def _hint_name(hint: Any) -> str:
    if hint is None or hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")
