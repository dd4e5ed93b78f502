"""Items on their way to storage: field types checked and converted, the spider's
`process_item`, and de-duplication keys (`Spider.dedupe_items_by`).

`CallbackRunner` hands every item a callback yields to `ItemProcessor.process`. The fields of
a dataclass item are checked against their annotations (str, int, float, bool, lists, tuples,
dicts, optional fields, unions, literals and nested dataclasses). A string that spells exactly
one value is converted: "12.50" to 12.5 for a float, "3" to 3 for an int, "true"/"false" for a
bool. Nothing is converted with loss: "12.50" is not an int and 3.5 is not an int. An item
that does not fit becomes an `item_errors` row naming the URL, callback, field and problem;
it is counted and the crawl goes on. Dict items have no declared types and are not checked.

Then the spider's optional `async def process_item(self, item, response)` may change the item
or return None to drop it. Last, `ItemProcessor.add` computes the item's de-duplication key;
the storage writer drops an item whose key it has stored before, in this run or an earlier one.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, Union, final

from crawler.errors import SpiderError, StopCrawl
from crawler.failures import storable
from crawler.records import DropReason, ErrorRecord, ItemErrorRecord, ItemKey, PageResult, utc_now
from crawler.spider.base import Spider, item_type_name
from crawler.spider.http import Response

__all__ = [
    "Invalid",
    "ItemProcessor",
    "is_item",
    "item_key",
    "validate_item",
]

logger = logging.getLogger(__name__)

_INT: Final = re.compile(r"[+-]?\d+")
_FLOAT: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLS: Final = {"true": True, "false": False}
_SEQUENCES: Final = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS: Final = (dict, collections.abc.Mapping, collections.abc.MutableMapping)

T = TypeVar("T")
ProcessItem = Callable[[Any, Response], Awaitable[Any]]


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


def is_item(value: object) -> bool:
    """Return whether a callback's output is an item: a mapping or a dataclass instance."""
    return isinstance(value, Mapping) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


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


def item_key(type_name: str, data: str, fields: Sequence[str]) -> ItemKey | Invalid:
    """Return the de-duplication key of an item from its stored JSON `data`."""
    stored = json.loads(data)
    missing = [name for name in fields if name not in stored]
    if missing:
        names = ", ".join(missing)
        return Invalid(field=missing[0], message=f"de-duplication field(s) missing: {names}")
    values = [stored[name] for name in fields]
    key = json.dumps(values, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return ItemKey(type=type_name, key=key, key_hash=int.from_bytes(digest, "big", signed=True))


@final
class ItemProcessor:
    """Checks, post-processes and keys the items of one spider (see the module docstring).

    Raises:
        SpiderError: at construction, when `dedupe_items_by` is malformed or `process_item`
            is not an `async def` method.
    """

    def __init__(self, spider: Spider) -> None:
        self._spider = spider
        self._all_types, self._by_type = _dedupe_fields(spider)
        self._process_item = _process_item_of(spider)

    async def process(self, item: object, response: Response, result: PageResult) -> object | None:
        """Return the item to store, or None when it was refused or dropped (recorded in
        `result`: an item error, a drop reason or a spider error)."""
        checked = self._check(item, response, result)
        if checked is None or self._process_item is None:
            return checked
        callback = response.request.callback
        try:
            processed = await self._process_item(checked, response)
        except StopCrawl:
            raise
        except Exception as exc:
            logger.exception("process_item failed on an item from %s", response.url)
            message = f"process_item failed: {type(exc).__name__}: {exc}"
            result.errors.append(_spider_error(response.url, message, callback))
            return None
        if processed is None:
            result.dropped.append(DropReason.PROCESS_ITEM)
            return None
        if not is_item(processed):
            message = (
                f"process_item returned {type(processed).__name__}, "
                "expected an item (dict or dataclass) or None"
            )
            logger.error("%s (callback %s, %s)", message, callback, response.url)
            result.errors.append(_spider_error(response.url, message, callback))
            return None
        return self._check(processed, response, result)

    def add(self, result: PageResult, type_name: str, data: str, response: Response) -> None:
        """Append a stored-ready item (type name, JSON) to `result`, with its key if any."""
        fields = self._by_type.get(type_name, self._all_types)
        if fields:
            key = item_key(type_name, data, fields)
            if isinstance(key, Invalid):
                self._refuse(result, response, type_name, key, data)
                return
            result.item_keys[len(result.items)] = key
        result.items.append((type_name, data))

    def _check(self, item: object, response: Response, result: PageResult) -> object | None:
        try:
            checked = validate_item(item)
        except RecursionError:  # a value nested past what Python can walk
            checked = Invalid(field="", message="a value is nested too deeply to check")
        if isinstance(checked, Invalid):
            type_name = item_type_name(item, self._spider)  # type: ignore[arg-type]
            self._refuse(result, response, type_name, checked, _json_of(item))
            return None
        return checked

    def _refuse(
        self, result: PageResult, response: Response, type_name: str, why: Invalid, data: str
    ) -> None:
        callback = response.request.callback
        logger.warning(
            "invalid %s item from %s (callback %s): %s", type_name, response.url, callback, why
        )
        result.item_errors.append(
            ItemErrorRecord(
                url=response.url,
                callback=callback,
                item_type=type_name,
                field=why.field,
                message=storable(why.message[:2000])[0],
                data=storable(data)[0],
            )
        )


def _dedupe_fields(spider: Spider) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Read `dedupe_items_by`: (fields for every type, fields by type name)."""
    setting: object = type(spider).dedupe_items_by
    where = f"{type(spider).__name__}.dedupe_items_by"
    if isinstance(setting, Mapping):
        return (), {str(name): _field_names(fields, where) for name, fields in setting.items()}
    return _field_names(setting, where), {}


def _field_names(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise SpiderError(
            f"{where} must be a tuple of field names such as ('upc',), or a mapping of item "
            f"type to such a tuple; got {value!r}"
        )
    names = tuple(value)
    if not all(isinstance(name, str) and name for name in names):
        raise SpiderError(f"{where}: field names must be non-empty strings, got {value!r}")
    return names


def _process_item_of(spider: Spider) -> ProcessItem | None:
    method = getattr(spider, "process_item", None)
    if method is None:
        return None
    if not inspect.iscoroutinefunction(method):
        raise SpiderError(
            f"{type(spider).__name__}.process_item must be an `async def` method "
            "taking (item, response)"
        )
    return method  # type: ignore[no-any-return]


def _spider_error(url: str, message: str, callback: str) -> ErrorRecord:
    return ErrorRecord(
        url=url,
        kind="spider",
        message=storable(message[:2000])[0],
        attempt=0,
        callback=callback,
        created_at=utc_now(),
    )


def _json_of(item: object) -> str:
    """The item as JSON for `item_errors.data`, whatever its values (repr for the odd ones)."""
    try:
        data = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else item  # type: ignore[arg-type]
        return json.dumps(data, ensure_ascii=False, default=repr)
    except Exception:  # a value that cannot even be copied: keep what can be shown
        return json.dumps({"repr": repr(item)[:2000]}, ensure_ascii=False)


@functools.cache
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
