"""Parsing one page outside a crawl (`crawler parse`): fetch it with the crawl's `Fetcher`,
or read it from a crawl database, run one callback, and report everything it yielded.

The page goes through the same `CallbackRunner` as in a crawl, so items are validated and
post-processed, and requests are admitted by a `Frontier` (the page's host counts as an
allowed domain, as with `crawl --start-url`) to show which a crawl would follow and which it
would skip, and why. Nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

from yarl import URL

from crawler.engine.callbacks import CallbackRunner
from crawler.errors import FetchError, StorageError
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Deferred, Failed
from crawler.frontier.gate import Frontier
from crawler.records import Candidate, ErrorRecord, PageResult, RequestState, Skipped
from crawler.settings import Settings
from crawler.spider.base import Spider, callback_of
from crawler.spider.http import Request, Response
from crawler.stats import Stats
from crawler.store.pages import DamagedBody, StoredPage, latest_page, latest_page_async
from crawler.store.pg_url import redact, with_pg_errors
from crawler.store.schema import connect

__all__ = ["ParsedPage", "parse_page"]


@final
@dataclass(slots=True, kw_only=True)
class ParsedPage:
    """One page and what its callback yielded."""

    url: str
    status: int
    content_type: str
    callback: str
    parsed: bool
    """False when a crawl would not parse the page (error status, other content type)."""
    items: list[tuple[str, str]] = field(default_factory=list)
    requests: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: int = 0
    """Requests refused as repeats of one yielded earlier on this page."""
    errors: list[ErrorRecord] = field(default_factory=list)
    invalid_items: list[str] = field(default_factory=list)
    """Items refused by validation: `type.field: message`."""
    dropped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the page and its output as JSON-ready data."""
        return {
            "url": self.url,
            "status": self.status,
            "content_type": self.content_type,
            "callback": self.callback,
            "parsed": self.parsed,
            "items": [{"type": t, "data": json.loads(data)} for t, data in self.items],
            "requests": [
                {"url": c.url, "callback": c.request.callback, "depth": c.request.depth}
                for c in self.requests
            ],
            "skipped": [
                {"url": s.url, "reason": s.reason.value, "depth": s.depth} for s in self.skipped
            ],
            "duplicates": self.duplicates,
            "errors": [{"kind": e.kind, "message": e.message} for e in self.errors],
            "invalid_items": self.invalid_items,
            "dropped": self.dropped,
        }


async def parse_page(
    spider: Spider,
    url: str,
    *,
    settings: Settings,
    callback: str | None = None,
    database: Path | str | None = None,
) -> ParsedPage:
    """Fetch `url` (or read it from `database`), run the callback and collect its output.

    Args:
        spider: the spider whose callback runs.
        url: the page.
        settings: the crawl settings (user agent, timeouts, parse_content_types…).
        callback: the spider method to run; default: the one the crawl used (with
            `database`), else `parse`.
        database: read the page from this crawl database (it needs stored bodies).

    Raises:
        SpiderError: no such callback.
        FetchError: the page could not be fetched.
        StorageError: the database does not hold the page or its body.
    """
    if callback is not None:
        callback_of(spider, callback)
    if database is not None:
        response = await _stored_response(database, url, callback)
    else:
        response = await _fetched_response(url, settings, callback or "parse")
    callback_of(spider, response.request.callback)
    page = ParsedPage(
        url=response.url,
        status=response.status,
        content_type=response.content_type,
        callback=response.request.callback,
        parsed=response.status < 300 and response.content_type in settings.parse_content_types,
    )
    if page.parsed:
        await _run_callback(spider, settings, response, page)
    return page


async def _run_callback(
    spider: Spider, settings: Settings, response: Response, page: ParsedPage
) -> None:
    """Run the page's callback as a crawl would and fill `page` with what it yielded."""
    stats = Stats()
    host = URL(response.url).raw_host or ""
    frontier = Frontier(settings, spider, [*spider.allowed_domains, host])
    runner = CallbackRunner(spider, frontier, stats, on_stop=lambda reason: None)
    result = PageResult(request_id=0, url=response.request.url, state=RequestState.DONE)

    async def collect(candidates: list[Candidate], skipped: list[Skipped]) -> None:
        page.requests.extend(candidates)
        page.skipped.extend(skipped)

    await spider.opened()
    try:
        await runner.run(response, result, links=False, spill=collect)
    finally:
        await spider.closed("finished")
    await collect(result.candidates, result.skipped)
    page.items = result.items
    page.duplicates = stats.skipped["duplicate"]
    page.errors = result.errors
    page.invalid_items = [f"{e.item_type}.{e.field}: {e.message}" for e in result.item_errors]
    page.dropped = [str(reason) for reason in result.dropped]


async def _fetched_response(url: str, settings: Settings, callback: str) -> Response:
    request = Request(url, callback=callback)
    async with Fetcher(settings, lambda target: None) as fetcher:
        outcome = await fetcher.fetch(request)
    if isinstance(outcome, Failed):
        error = outcome.error
        raise FetchError(url, f"cannot fetch {url}: {error.kind}: {error.message}")
    if isinstance(outcome, Deferred):
        raise FetchError(url, "the server asked to retry later (Retry-After)")
    return Response(
        url=outcome.url,
        status=outcome.status,
        headers=outcome.headers,
        body=outcome.body,
        request=request,
    )


async def _stored_response(database: Path | str, url: str, callback: str | None) -> Response:
    if isinstance(database, str):  # PostgreSQL, read in a thread: its connection is blocking
        page = await asyncio.to_thread(_latest_pg_page, database, url)
    else:
        conn = await connect(database, read_only=True)
        try:
            page = await latest_page_async(conn, url)
        except sqlite3.Error as exc:  # not a crawl database
            raise StorageError(f"cannot read pages from {database}: {exc}") from None
        finally:
            await conn.close()
    if page is None:
        raise StorageError(f"{database} has no page {url}")
    try:
        body = page.body()
    except DamagedBody as exc:
        raise StorageError(f"the stored body of {url} is damaged: {exc}") from None
    if body is None:
        raise StorageError(
            f"{database} holds {url} without its body; crawl with -s store_body=true"
        )
    request = page.request()
    if callback is not None:
        request = request.replace(callback=callback)
    return page.response(body, request)


def _latest_pg_page(url: str, page_url: str) -> StoredPage | None:
    from crawler.store.pg_read import PgReader  # loads asyncpg (crawler.store.pg_url)

    reader = PgReader(url)
    try:
        return latest_page(reader, page_url)
    except with_pg_errors() as exc:
        raise StorageError(f"cannot read pages from {redact(url)}: {exc}") from None
    finally:
        reader.close()
