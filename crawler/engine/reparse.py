"""Running a spider's callbacks outside a crawl: over the page bodies a crawl stored
(`crawler reparse`), or over one page fetched or read from a database (`crawler parse`).

Both build the same `Response` a crawl builds and run it through the same `CallbackRunner`,
so what you see is what a crawl would store. Requests the callbacks yield are admitted by a
`Frontier` (to show or count what a crawl would do with them) and never fetched.

Reparse replaces, for every page with a stored body, what its callbacks produced: its
`items`, typed-table rows and item views, `item_errors`, and `errors` of kind `spider` and
`item`; `item_keys` is rebuilt. It reads and writes pages in batches of `REPARSE_BATCH`, so
memory stays flat, all in one transaction: an interrupted reparse (Ctrl-C, a crash, a callback
raising `StopCrawl`) leaves the database as it was before.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import aiosqlite

from crawler.engine.callbacks import CallbackRunner
from crawler.errors import StorageError
from crawler.frontier.gate import Frontier
from crawler.records import Candidate, DropReason, PageResult, RequestState, Skipped, utc_now
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.stats import Stats
from crawler.store.claims import LEASE_SECONDS
from crawler.store.columns import quote_identifier
from crawler.store.item_tables import ItemTables, declare_item_tables
from crawler.store.pages import DamagedBody, pages_with_bodies
from crawler.store.schema import open_database, rollback

__all__ = ["REPARSE_BATCH", "ReparseSummary", "reparse"]

REPARSE_BATCH: Final = 100
"""Pages parsed and committed per transaction."""
CALLBACK_ERROR_KINDS: Final = ("spider", "item")


@final
@dataclass(slots=True, kw_only=True)
class ReparseSummary:
    """What a reparse did."""

    pages: int = 0
    """Pages whose callback ran."""
    not_parsed: int = 0
    """Pages with a body that a crawl would not parse (error status, other content type)."""
    without_body: int = 0
    """Pages with no stored body: their items were kept as they were."""
    items: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    """Requests the callbacks yielded (not crawled)."""
    stopped: str | None = None
    """Why a callback stopped the reparse (`StopCrawl`), if one did."""

    def stopping(self) -> bool:
        """Whether a callback raised `StopCrawl`: no further page is parsed."""
        return self.stopped is not None

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready data."""
        return {
            "pages": self.pages,
            "not_parsed": self.not_parsed,
            "without_body": self.without_body,
            "items": sum(self.items.values()),
            "items_by_type": dict(sorted(self.items.items())),
            "items_dropped": dict(sorted(self.dropped.items())),
            "errors": dict(sorted(self.errors.items())),
            "requests_not_crawled": self.requests,
            "stopped": self.stopped,
        }


async def reparse(spider: Spider, db: Path, settings: Settings) -> ReparseSummary:
    """Re-run `spider`'s callbacks over the bodies stored in `db` (an existing file),
    replacing what they produced.

    Raises:
        StorageError: not a crawl database, another spider's crawl, no stored bodies, or a
            crawl is running on the file.
    """
    conn = await open_database(db)
    try:
        summary = ReparseSummary()
        await _check(conn, spider, db, summary)
        stats = Stats()
        frontier = Frontier(settings, spider, list(spider.allowed_domains))
        runner = CallbackRunner(spider, frontier, stats, on_stop=_stopper(summary))
        await spider.opened()
        try:
            await _transaction(
                conn, functools.partial(_replace, conn, runner, spider, settings, summary)
            )
        except _Stopped:
            summary.stopped = f"{summary.stopped} (nothing was changed)"
        finally:
            await spider.closed("finished")
        summary.requests += stats.skipped["duplicate"]
        return summary
    finally:
        await conn.close()


def _stopper(summary: ReparseSummary) -> Callable[[str], None]:
    def stop(reason: str) -> None:
        summary.stopped = summary.stopped or reason

    return stop


async def _check(
    conn: aiosqlite.Connection, spider: Spider, db: Path, summary: ReparseSummary
) -> None:
    spiders = {str(row[0]) for row in await conn.execute_fetchall("SELECT spider FROM crawls")}
    if spiders - {spider.name}:
        others = ", ".join(sorted(spiders - {spider.name}))
        raise StorageError(f"{db} holds a crawl of spider {others!r}, not {spider.name!r}")
    running = await conn.execute_fetchall(
        "SELECT id FROM crawls WHERE status = 'running' AND heartbeat_at > ?",
        (time.time() - LEASE_SECONDS,),
    )
    if running:
        raise StorageError(f"a crawl is running on {db}; reparse it when the crawl has ended")
    rows = await conn.execute_fetchall(
        "SELECT count(body), count(*) - count(body) FROM pages WHERE status < 300"
    )
    with_body, summary.without_body = (int(v) for v in next(iter(rows)))
    if not with_body:
        raise StorageError(
            f"{db} has no stored page bodies to reparse; crawl with -s store_body=true"
        )


class _Stopped(Exception):
    """A callback stopped the reparse (`StopCrawl`): what it did so far is rolled back."""


async def _replace(
    conn: aiosqlite.Connection,
    runner: CallbackRunner,
    spider: Spider,
    settings: Settings,
    summary: ReparseSummary,
) -> None:
    """Clear what the callbacks produced, parse every stored page again and store what they
    yield now: all of it inside the caller's transaction, so that items, item keys and typed
    tables never disagree, whatever stops the reparse."""
    await _clear(conn)
    await _parse_all(conn, runner, settings, summary)
    if summary.stopping():
        raise _Stopped
    await declare_item_tables(conn, spider, own_transaction=False)
    await _update_run_stats(conn)


async def _transaction(conn: aiosqlite.Connection, work: Callable[[], Awaitable[None]]) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await work()
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise


_REPARSED: Final = "SELECT request_id FROM pages WHERE body IS NOT NULL"


async def _clear(conn: aiosqlite.Connection) -> None:
    """Delete what the callbacks produced for every page with a body; drop emptied tables."""
    await conn.execute(f"DELETE FROM items WHERE request_id IN ({_REPARSED})")
    marks = ", ".join("?" * len(CALLBACK_ERROR_KINDS))
    await conn.execute(
        f"DELETE FROM errors WHERE kind IN ({marks}) AND request_id IN ({_REPARSED})",
        CALLBACK_ERROR_KINDS,
    )
    await conn.execute(f"DELETE FROM item_errors WHERE request_id IN ({_REPARSED})")
    # Keys cannot be told apart by page: they are rebuilt from the items stored from here on.
    await conn.execute("DELETE FROM item_keys")
    registered = await conn.execute_fetchall("SELECT type, kind, name FROM item_tables")
    for type_name, kind, name in registered:
        quoted = quote_identifier(str(name))
        if kind == "table":
            await conn.execute(f"DELETE FROM {quoted} WHERE request_id IN ({_REPARSED})")
            left = await conn.execute_fetchall(f"SELECT 1 FROM {quoted} LIMIT 1")
            drop = f"DROP TABLE IF EXISTS {quoted}"
        else:
            left = await conn.execute_fetchall(
                "SELECT 1 FROM items WHERE type = ? LIMIT 1", (type_name,)
            )
            drop = f"DROP VIEW IF EXISTS {quoted}"
        if not left:  # made again from the current dataclass / keys as items arrive
            await conn.execute(drop)
            await conn.execute("DELETE FROM item_tables WHERE name = ?", (name,))


async def _parse_all(
    conn: aiosqlite.Connection, runner: CallbackRunner, settings: Settings, summary: ReparseSummary
) -> None:
    parse_types = frozenset(settings.parse_content_types)
    tables = ItemTables()
    seen_keys: set[tuple[str, int]] = set()
    after = 0

    async def count(candidates: list[Candidate], skipped: list[Skipped]) -> None:
        summary.requests += len(candidates) + len(skipped)

    while not summary.stopping():
        pages = await pages_with_bodies(conn, after, REPARSE_BATCH)
        if not pages:
            break
        batch: list[tuple[int, PageResult]] = []
        for page in pages:
            after = page.id
            if page.status >= 300 or page.content_type not in parse_types:
                summary.not_parsed += 1
                continue
            try:
                body = page.body()
            except DamagedBody:
                body = None  # a damaged body: nothing to parse
            if body is None:
                summary.not_parsed += 1
                continue
            response = page.response(body)
            result = PageResult(
                request_id=page.request_id, url=response.request.url, state=RequestState.DONE
            )
            await runner.run(response, result, links=False, spill=count)
            await count(result.candidates, result.skipped)
            summary.pages += 1
            batch.append((page.crawl_id, result))
            if summary.stopping():
                break
        await _store(conn, tables, batch, seen_keys, summary)


@dataclass(slots=True)
class _Rows:
    """One batch's rows, in the columns of each table's INSERT."""

    items: list[tuple[object, ...]] = field(default_factory=list)
    keys: list[tuple[object, ...]] = field(default_factory=list)
    errors: list[tuple[object, ...]] = field(default_factory=list)
    item_errors: list[tuple[object, ...]] = field(default_factory=list)


async def _store(
    conn: aiosqlite.Connection,
    tables: ItemTables,
    batch: Sequence[tuple[int, PageResult]],
    seen_keys: set[tuple[str, int]],
    summary: ReparseSummary,
) -> None:
    """Write one batch's items (de-duplicated as the crawl's writer does), typed rows and
    errors."""
    now = utc_now()
    rows = _Rows()
    for crawl_id, result in batch:
        _add_items(rows, crawl_id, result, seen_keys, summary, now)
        _add_errors(rows, crawl_id, result, summary, now)
    await conn.executemany(
        "INSERT INTO items (crawl_id, request_id, page_url, type, data, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows.items,
    )
    await conn.executemany(
        "INSERT OR IGNORE INTO item_keys (type, key_hash, key, crawl_id, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        rows.keys,
    )
    await conn.executemany(
        "INSERT INTO errors (crawl_id, request_id, url, kind, message, attempt, callback, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows.errors,
    )
    await conn.executemany(
        "INSERT INTO item_errors (crawl_id, request_id, url, callback, item_type, field, "
        "message, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows.item_errors,
    )
    await tables.write(conn, [result for _, result in batch])


def _add_items(
    rows: _Rows,
    crawl_id: int,
    result: PageResult,
    seen_keys: set[tuple[str, int]],
    summary: ReparseSummary,
    now: str,
) -> None:
    """Keep the page's items whose key no earlier item had; `result.items` keeps only those
    (the typed tables are written from it)."""
    kept: list[tuple[str, str]] = []
    for index, (type_name, data) in enumerate(result.items):
        if (key := result.item_keys.get(index)) is not None:
            if (key.type, key.key_hash) in seen_keys:
                summary.dropped[DropReason.DUPLICATE.value] += 1
                continue
            seen_keys.add((key.type, key.key_hash))
            rows.keys.append((key.type, key.key_hash, key.key, crawl_id, now))
        kept.append((type_name, data))
        rows.items.append((crawl_id, result.request_id, result.url, type_name, data, now))
        summary.items[type_name] += 1
    result.items = kept


def _add_errors(
    rows: _Rows, crawl_id: int, result: PageResult, summary: ReparseSummary, now: str
) -> None:
    """Count the page's dropped items and errors, and add its error and item_error rows."""
    summary.dropped.update(reason.value for reason in result.dropped)
    if result.item_errors:
        summary.dropped[DropReason.INVALID.value] += len(result.item_errors)
    for e in result.errors:
        summary.errors[e.kind] += 1
        rows.errors.append(
            (crawl_id, result.request_id, e.url, e.kind, e.message, e.attempt, e.callback, now)
        )
    request_id = result.request_id
    rows.item_errors.extend(
        (crawl_id, request_id, e.url, e.callback, e.item_type, e.field, e.message, e.data, now)
        for e in result.item_errors
    )


async def _update_run_stats(conn: aiosqlite.Connection) -> None:
    """Make each run's stored counters agree with the tables again."""
    await conn.execute(
        """
        UPDATE crawls SET stats = json_set(
            coalesce(stats, '{}'),
            '$.items', (SELECT count(*) FROM items WHERE crawl_id = crawls.id),
            '$.items_by_type', json((SELECT json_group_object(type, n) FROM (
                SELECT type, count(*) AS n FROM items WHERE crawl_id = crawls.id
                GROUP BY type ORDER BY type))),
            '$.errors', json((SELECT json_group_object(kind, n) FROM (
                SELECT kind, count(*) AS n FROM errors WHERE crawl_id = crawls.id
                GROUP BY kind ORDER BY kind))))
        WHERE json_valid(coalesce(stats, '{}'))
        """
    )
