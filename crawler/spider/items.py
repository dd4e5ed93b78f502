"""Items on their way to storage: field types checked and converted, the spider's
`process_item`, and de-duplication keys (`Spider.dedupe_items_by`).

`CallbackRunner` hands every item a callback yields to `ItemProcessor.process`. The fields of
a dataclass item are checked against their annotations and converted where that loses
nothing (crawler.spider.validation). An item that does not fit becomes an `item_errors` row
naming the URL, callback, field and problem; it is counted and the crawl goes on. Dict items
have no declared types and are not checked.

Then the spider's optional `async def process_item(self, item, response)` may change the item
or return None to drop it. Last, `ItemProcessor.add` computes the item's de-duplication key;
the storage writer drops an item whose key it has stored before, in this run or an earlier one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, final

from crawler.errors import SpiderError, StopCrawl
from crawler.failures import storable
from crawler.records import DropReason, ErrorRecord, ItemErrorRecord, ItemKey, PageResult, utc_now
from crawler.spider.base import Spider, item_type_name
from crawler.spider.http import Response
from crawler.spider.validation import Invalid, validate_item

__all__ = ["ItemProcessor", "is_item", "item_key"]

logger = logging.getLogger(__name__)

ProcessItem = Callable[[Any, Response], Awaitable[Any]]


def is_item(value: object) -> bool:
    """Return whether a callback's output is an item: a mapping or a dataclass instance."""
    return isinstance(value, Mapping) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


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
