"""Running spider callbacks: every output checked, every exception caught, logged and recorded.

This is the one place where user code's failures are caught. A raising callback keeps the
items and requests it yielded before the exception; the error is logged with its traceback,
stored in `errors` (kind `spider`), counted, and the crawl goes on. Output that is neither an
item nor a Request, and items that cannot be stored as JSON, are recorded the same way. A
callback that holds the event loop longer than `blocking_warning` (a `time.sleep`, blocking
I/O) is named in a warning and an `errors` row of kind `blocking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from typing import Final, cast, final

from crawler.errors import SkipReason, SpiderError, StopCrawl, StorageError
from crawler.failures import describe, internal_error, storable
from crawler.frontier.gate import Frontier
from crawler.records import Candidate, ErrorRecord, PageResult, Skipped, utc_now
from crawler.spider.base import Spider, callback_of, item_type_name
from crawler.spider.http import Request, RequestBatch, Response
from crawler.spider.items import ItemProcessor, is_item
from crawler.spider.rules import Refused
from crawler.stats import Stats

__all__ = ["CallbackRunner", "LoopHeartbeat", "serialise_item", "spider_error"]

logger = logging.getLogger(__name__)

SPIDER_ERROR: Final = "spider"
ITEM_ERROR: Final = "item"
BLOCKING_ERROR: Final = "blocking"
SPILL_AT: Final = 5000


def serialise_item(item: object) -> str | None:
    """Return an item as a JSON object, or None if it is not an item (dict or dataclass)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        data: object = _fields_of(item)
    elif isinstance(item, Mapping):
        data = dict(item)
    else:
        return None
    return json.dumps(
        data, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_fields_of
    )


def _fields_of(value: object) -> dict[str, object]:
    """A dataclass instance as a dict of its fields, one level at a time (json.dumps calls
    this again for nested dataclasses; cheaper than `dataclasses.asdict`'s deep copy)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


@final
class CallbackRunner:
    """Runs a spider's callbacks and routes what they yield into a `PageResult`."""

    def __init__(
        self,
        spider: Spider,
        frontier: Frontier,
        stats: Stats,
        *,
        on_stop: Callable[[str], None],
        blocking_warning: float = 0.0,
        heartbeat: LoopHeartbeat | None = None,
    ) -> None:
        self._spider = spider
        self._frontier = frontier
        self._stats = stats
        self._on_stop = on_stop
        self._items = ItemProcessor(spider)
        self._blocking_warning = blocking_warning
        self._heartbeat = heartbeat

    def admit(
        self,
        request: Request,
        *,
        parent_id: int | None,
        candidates: list[Candidate],
        skipped: list[Skipped],
        errors: list[ErrorRecord],
        callback: str | None = None,
    ) -> None:
        """Pass a request through the frontier; a wrong request becomes an error record."""
        try:
            reason = self._frontier.admit(
                request, parent_id=parent_id, candidates=candidates, skipped=skipped
            )
        except SpiderError as exc:
            logger.error("%s", exc)
            errors.append(spider_error(request.url, str(exc), callback))
            return
        except Exception as exc:  # one request the gate cannot handle: that request's error
            logger.warning("internal error admitting %r: %s", request.url, describe(exc))
            errors.append(internal_error(str(request.url), exc, attempt=0, callback=callback))
            return
        if reason is SkipReason.DUPLICATE:  # refused by the in-memory cache: counted, not stored
            self._stats.skipped[reason.value] += 1

    async def run(
        self,
        response: Response,
        result: PageResult,
        *,
        links: bool,
        spill: Callable[[list[Candidate], list[Skipped]], Awaitable[None]],
    ) -> None:
        """Run the request's callback over `response`, filling `result`.

        When a callback yields very many requests, they are handed to `spill` (committed
        ahead of the page) every `SPILL_AT` URLs, so memory stays bounded. Each step of the
        callback is timed against the loop's heartbeat (see `LoopHeartbeat`) to catch one that
        blocks the event loop.
        """
        request = response.request
        name = request.callback
        depth = request.depth
        if links:
            result.links = response.links()
        blocked = 0.0
        heartbeat, threshold = self._heartbeat, self._blocking_warning
        try:
            # callback_of checked it is an async generator function: closing it runs its
            # `finally` blocks now, not whenever the garbage collector gets to it.
            outputs = cast(AsyncGenerator[object, None], callback_of(self._spider, name)(response))
            async with contextlib.aclosing(outputs):
                while True:
                    start = time.perf_counter()
                    try:
                        output = await anext(outputs)
                    except StopAsyncIteration:
                        break
                    finally:
                        # Only a step slower than the threshold can have blocked that long; it
                        # did if the loop's heartbeat did not tick while it ran.
                        if heartbeat is not None and threshold:
                            end = time.perf_counter()
                            if end - start > threshold:
                                blocked = max(blocked, end - max(start, heartbeat.last))
                    routing = self._dispatch(output, response, result, depth, name, spill)
                    if routing is not None:
                        await routing
                    if len(result.candidates) + len(result.skipped) >= SPILL_AT:
                        await spill(result.candidates, result.skipped)
                        result.candidates, result.skipped = [], []
        except StopCrawl as stop:
            self._on_stop(stop.reason)
        except StorageError:
            raise  # a spill could not be committed: not the callback's fault
        except Exception as exc:
            logger.exception("callback %s failed on %s", name, response.url)
            message = f"{type(exc).__name__}: {exc}"
            result.errors.append(spider_error(response.url, message, name))
        if self._blocking_warning and blocked > self._blocking_warning:
            self._record_blocking(blocked, response, result, name)

    def _dispatch(
        self,
        output: object,
        response: Response,
        result: PageResult,
        depth: int,
        name: str,
        spill: Callable[[list[Candidate], list[Skipped]], Awaitable[None]],
    ) -> Coroutine[object, None, None] | None:
        """Route one output of a callback: a Request is admitted here (most outputs, and no
        coroutine for them); anything else returns the coroutine that routes it. `depth` and
        `name` are those of the page's request."""
        if isinstance(output, Request):
            if output.depth <= depth:  # a plain Request(url): one below its page
                output = output.replace(depth=depth + 1)
            self.admit(
                output,
                parent_id=result.request_id,
                candidates=result.candidates,
                skipped=result.skipped,
                errors=result.errors,
                callback=name,
            )
            return None
        if type(output) is RequestBatch:
            if output.depth <= depth:
                output.depth = depth + 1
            return self._admit_batch(output, result, name, spill)
        return self._route(output, response, result)

    def _record_blocking(
        self, blocked: float, response: Response, result: PageResult, name: str
    ) -> None:
        """Warn of, and record, callback `name` holding the event loop for `blocked` seconds."""
        message = (
            f"callback {name} blocked the event loop for {blocked:.1f} s; "
            "move blocking work to asyncio.to_thread"
        )
        logger.warning("%s (%s)", message, response.url)
        result.errors.append(_error(response.url, BLOCKING_ERROR, message, name))

    async def _admit_batch(
        self,
        batch: RequestBatch,
        result: PageResult,
        callback: str,
        spill: Callable[[list[Candidate], list[Skipped]], Awaitable[None]],
    ) -> None:
        """Pass a batch's URLs through the frontier, `SPILL_AT` at a time (a batch may hold a
        whole sitemap); a wrong batch (unknown callback, unstorable meta) is one error."""
        for start in range(0, len(batch.urls), SPILL_AT):
            try:
                duplicates = self._frontier.admit_batch(
                    batch,
                    batch.urls[start : start + SPILL_AT],
                    parent_id=result.request_id,
                    candidates=result.candidates,
                    skipped=result.skipped,
                )
            except SpiderError as exc:
                logger.error("%s", exc)
                result.errors.append(spider_error(batch.urls[start], str(exc), callback))
                return
            self._stats.skipped[SkipReason.DUPLICATE.value] += duplicates
            if len(result.candidates) + len(result.skipped) >= SPILL_AT:
                await spill(result.candidates, result.skipped)
                result.candidates, result.skipped = [], []

    async def _route(self, output: object, response: Response, result: PageResult) -> None:
        request = response.request
        if isinstance(output, Refused):  # a link the spider chose not to follow (rules.py)
            reason = self._frontier.refuse(
                output.url,
                output.reason,
                depth=response.depth + 1,
                parent_id=result.request_id,
                skipped=result.skipped,
            )
            if reason is SkipReason.DUPLICATE:  # counted, not stored, as in admit()
                self._stats.skipped[reason.value] += 1
            return
        if is_item(output):  # checked, converted, process_item: None when refused or dropped
            output = await self._items.process(output, response, result)
            if output is None:
                return
        try:
            data = serialise_item(output)
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"item {type(output).__name__} cannot be stored as JSON: {exc}"
            logger.error("%s (callback %s, %s)", message, request.callback, response.url)
            result.errors.append(_error(response.url, ITEM_ERROR, message, request.callback))
            return
        if data is None:
            message = (
                f"callback yielded {type(output).__name__}, expected an item "
                "(dict or dataclass) or a Request"
            )
            logger.error("%s (callback %s, %s)", message, request.callback, response.url)
            result.errors.append(spider_error(response.url, message, request.callback))
            return
        data, replaced = storable(data)
        self._stats.strings_replaced += replaced
        type_name = item_type_name(output, self._spider)  # type: ignore[arg-type]
        if dataclasses.is_dataclass(output):  # its typed table is made from the class
            result.item_classes[type(output)] = type_name
        self._items.add(result, type_name, data, response)


@final
class LoopHeartbeat:
    """A clock the event loop advances every `interval` seconds while it is free to run tasks.

    A callback step that took longer than the warning threshold while the heartbeat did not
    advance held the loop itself (`time.sleep`, blocking I/O, heavy CPU); one that merely
    waited let the heartbeat tick. Two clock reads per step instead of wrapping every
    resumption of every callback.
    """

    __slots__ = ("interval", "last")

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.last = time.perf_counter()
        """When the loop last ran the heartbeat (time.perf_counter)."""

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            self.last = time.perf_counter()
            await asyncio.sleep(self.interval)


def spider_error(url: str, message: str, callback: str | None) -> ErrorRecord:
    """Return an error record of kind `spider` (a callback's exception or wrong output)."""
    return _error(url, SPIDER_ERROR, message, callback)


def _error(url: str, kind: str, message: str, callback: str | None) -> ErrorRecord:
    return ErrorRecord(
        url=storable(url)[0],
        kind=kind,
        message=storable(message[:2000])[0],
        attempt=0,
        callback=callback,
        created_at=utc_now(),
    )
