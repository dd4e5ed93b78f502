"""`crawler reparse`: re-running a spider's callbacks over the page bodies a crawl stored,
and replacing what they produced, in one process or in several.

Reparse replaces, for every page with a stored body, what its callbacks produced: its
`items`, typed-table rows and item views, `item_errors`, and `errors` of kind `spider` and
`item`; `item_keys` is rebuilt. Requests the callbacks yield are admitted by a `Frontier` (to
count them) and never fetched; the `links`, `pages` and `requests` tables are left alone.

The pages are read in chunks of consecutive ids (`REPARSE_BATCH` pages, `WORKER_CHUNK` in
worker processes) and parsed by a
`ChunkParser` (crawler.engine.reparse_chunks), in this process (`processes=1`) or in worker
processes (crawler.engine.reparse_workers), which return each chunk's results to this one.
Either way this process, the one writer, stores them chunk by chunk in page order
(crawler.engine.reparse_rows), all in one transaction: an interrupted reparse (Ctrl-C, a
crash, a worker's death, a callback raising `StopCrawl`) leaves the database as it was before,
and what a reparse stores does not depend on the number of processes. Cancelled again while
it stops (a second Ctrl-C), it stops its worker processes at once instead of letting them
finish their chunk; the rollback and the closing of the file still run to their end. Memory
stays flat: no more than `CHUNKS_PER_WORKER` chunks per worker are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pickle
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import aiosqlite
from rich.console import Console

from crawler.engine.crawl import run_to_the_end
from crawler.engine.reparse_chunks import ChunkParser, ParsedChunk
from crawler.engine.reparse_progress import ReparseProgress, show_reparse_progress
from crawler.engine.reparse_rows import SqliteRowWriter, Tally
from crawler.engine.reparse_workers import (
    CHUNKS_PER_WORKER,
    ChunkPool,
    SpiderSource,
    WorkerPlan,
)
from crawler.errors import SpiderError, StorageError
from crawler.records import utc_now
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.store.claims import LEASE_SECONDS
from crawler.store.history import archive_reparsed_items
from crawler.store.item_tables import ItemTables, declare_item_tables
from crawler.store.pages import pages_with_bodies
from crawler.store.schema import open_database, rollback

__all__ = [
    "REPARSE_BATCH",
    "ReparseSummary",
    "refuse_other_spiders",
    "refuse_unready",
    "reparse",
]

REPARSE_BATCH: Final = 100
"""Pages per chunk parsed in this process: read, parsed and written together."""
WORKER_CHUNK: Final = 3 * REPARSE_BATCH
"""Pages per chunk handed to a worker process: each hand-over costs thread and process
switches, spread over more pages than in one process. Fewer (a multiple of `REPARSE_BATCH`)
when the file holds too few pages to give every worker `CHUNKS_PER_WORKER` chunks. The
worker returns its results by `REPARSE_BATCH` pages, written as in one process."""
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
    tally: Tally = field(default_factory=Tally)
    """Items stored by type, items dropped by reason, errors by kind."""
    requests: int = 0
    """Requests the callbacks yielded (not crawled)."""
    stopped: str | None = None
    """Why a callback stopped the reparse (`StopCrawl`), if one did."""
    processes: int = 1

    def stopping(self) -> bool:
        """Whether a callback raised `StopCrawl`: no further page is parsed."""
        return self.stopped is not None

    def add(self, chunk: ParsedChunk) -> None:
        """Count one chunk's pages."""
        self.pages += len(chunk.results)
        self.not_parsed += chunk.not_parsed
        self.requests += chunk.requests
        self.stopped = self.stopped or chunk.stopped

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready data."""
        tally = self.tally
        return {
            "pages": self.pages,
            "not_parsed": self.not_parsed,
            "without_body": self.without_body,
            "items": sum(tally.items.values()),
            "items_by_type": dict(sorted(tally.items.items())),
            "items_dropped": dict(sorted(tally.dropped.items())),
            "errors": dict(sorted(tally.errors.items())),
            "requests_not_crawled": self.requests,
            "stopped": self.stopped,
            "processes": self.processes,
        }


@final
@dataclass(frozen=True, slots=True)
class _Job:
    spider: Spider
    settings: Settings
    processes: int
    plan: WorkerPlan
    progress: ReparseProgress


async def reparse(
    spider: Spider,
    db: Path,
    settings: Settings,
    *,
    processes: int = 1,
    spider_source: SpiderSource | None = None,
    console: Console | None = None,
) -> ReparseSummary:
    """Re-run `spider`'s callbacks over the bodies stored in `db` (an existing file),
    replacing what they produced.

    Args:
        processes: parse in this many worker processes (1: in this process).
        spider_source: how a worker loads the spider class (it must pickle); by default the
            class itself, pickled by reference (so it must be importable by its module name).
        console: show progress there (a live line on a terminal, else plain lines).

    Raises:
        StorageError: not a crawl database, another spider's crawl, no stored bodies, or a
            crawl is running on the file.
        SpiderError: `processes` > 1 and the spider cannot be loaded in another process.
        ReparseWorkerDied: a worker process died; nothing was changed.
    """
    plan = _worker_plan(spider, db, settings, processes, spider_source)
    conn = await open_database(db)
    try:
        summary = ReparseSummary(processes=processes)
        total = await _check(conn, spider, db, summary)
        job = _Job(spider, settings, processes, plan, ReparseProgress(total))
        shown = None
        if console is not None:
            interval = settings.progress_interval
            shown = asyncio.create_task(
                show_reparse_progress(job.progress, console=console, interval=interval)
            )
        try:
            await _run(conn, job, summary)
        finally:
            if shown is not None:
                shown.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shown
        return summary
    finally:
        await run_to_the_end(conn.close())


async def _run(conn: aiosqlite.Connection, job: _Job, summary: ReparseSummary) -> None:
    """Replace, in one transaction; the spider is opened here only if it parses here."""
    here = job.processes == 1
    if here:
        await job.spider.opened()
    try:
        await _transaction(conn, functools.partial(_replace, conn, job, summary))
    except _Stopped:
        summary.stopped = f"{summary.stopped} (nothing was changed)"
    finally:
        if here:
            await job.spider.closed("finished")


def _worker_plan(
    spider: Spider,
    db: Path,
    settings: Settings,
    processes: int,
    spider_source: SpiderSource | None,
) -> WorkerPlan:
    """What workers need; checked to pickle when there will be workers."""
    source = spider_source or functools.partial(_same_class, type(spider))
    level = logging.getLogger().getEffectiveLevel()
    plan = WorkerPlan(
        spider_source=source,
        settings=settings,
        database=db,
        batch=REPARSE_BATCH,
        log_level=level,
    )
    if processes > 1:
        try:
            pickle.dumps(plan)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SpiderError(
                f"spider {spider.name!r} cannot be loaded in a worker process ({exc}); "
                "reparse with --processes 1"
            ) from None
    return plan


def _same_class(cls: type[Spider]) -> type[Spider]:
    return cls


async def _check(
    conn: aiosqlite.Connection, spider: Spider, db: Path, summary: ReparseSummary
) -> int:
    """Refuse what cannot be reparsed; return the number of pages with a stored body."""
    spiders = {str(row[0]) for row in await conn.execute_fetchall("SELECT spider FROM crawls")}
    refuse_other_spiders(db, spiders, spider)
    running = await conn.execute_fetchall(
        "SELECT id FROM crawls WHERE status = 'running' AND heartbeat_at > ?",
        (time.time() - LEASE_SECONDS,),
    )
    rows = await conn.execute_fetchall(
        "SELECT count(body) FILTER (WHERE status < 300), "
        "count(*) FILTER (WHERE status < 300 AND body IS NULL), count(body) FROM pages"
    )
    with_body, summary.without_body, total = (int(v) for v in next(iter(rows)))
    refuse_unready(db, running=bool(running), with_body=with_body)
    return total


def refuse_other_spiders(where: object, spiders: set[str], spider: Spider) -> None:
    """Refuse to reparse a database (named `where`) holding crawls of other spiders.

    Raises:
        StorageError: `spiders`, those of its crawls, are not all `spider`.
    """
    if spiders - {spider.name}:
        others = ", ".join(sorted(spiders - {spider.name}))
        raise StorageError(f"{where} holds a crawl of spider {others!r}, not {spider.name!r}")


def refuse_unready(where: object, *, running: bool, with_body: int) -> None:
    """Refuse to reparse a database (named `where`) a crawl is `running` on, or one without
    successful pages' bodies (`with_body` of them).

    Raises:
        StorageError: it is either.
    """
    if running:
        raise StorageError(f"a crawl is running on {where}; reparse it when the crawl has ended")
    if not with_body:
        raise StorageError(
            f"{where} has no stored page bodies to reparse; crawl with -s store_body=true"
        )


class _Stopped(Exception):
    """A callback stopped the reparse (`StopCrawl`): what it did so far is rolled back."""


async def _replace(conn: aiosqlite.Connection, job: _Job, summary: ReparseSummary) -> None:
    """Clear what the callbacks produced, parse every stored page again and store what they
    yield now: all of it inside the caller's transaction, so that items, item keys and typed
    tables never disagree, whatever stops the reparse."""
    await _clear(conn)
    if job.processes == 1:
        await _store_all(conn, _chunks_here(conn, job), job, summary)
    else:
        share = job.progress.total // (job.processes * CHUNKS_PER_WORKER)
        size = max(REPARSE_BATCH, min(WORKER_CHUNK, share // REPARSE_BATCH * REPARSE_BATCH))
        async with ChunkPool(job.plan, job.processes, size) as pool:
            await _store_all(conn, pool.chunks(conn), job, summary)
    if summary.stopping():
        raise _Stopped
    await declare_item_tables(conn, job.spider, own_transaction=False)
    await _update_run_stats(conn)


async def _chunks_here(conn: aiosqlite.Connection, job: _Job) -> AsyncGenerator[ParsedChunk, None]:
    """Parse every page with a body in this process, chunk by chunk."""
    parser = ChunkParser(job.spider, job.settings)
    after = 0
    while pages := await pages_with_bodies(conn, after, REPARSE_BATCH):
        after = pages[-1].id
        yield await parser.parse(pages)


async def _store_all(
    conn: aiosqlite.Connection,
    chunks: AsyncGenerator[ParsedChunk, None],
    job: _Job,
    summary: ReparseSummary,
) -> None:
    """Store each chunk's results as it comes, in page order; stop after the chunk in which
    a callback stopped the reparse."""
    writer = SqliteRowWriter(conn, summary.tally)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            summary.add(chunk)
            await writer.write(chunk.results, chunk.tables)
            job.progress.done += chunk.read
            if summary.stopping():
                return


async def _transaction(conn: aiosqlite.Connection, work: Callable[[], Awaitable[None]]) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await work()
        await conn.execute("COMMIT")
    except BaseException:
        await run_to_the_end(rollback(conn))  # a second Ctrl-C does not cut it short
        raise


_REPARSED: Final = "SELECT request_id FROM pages WHERE body IS NOT NULL"


async def _clear(conn: aiosqlite.Connection) -> None:
    """Delete what the callbacks produced for every page with a body (its items kept in
    `item_history`, reason `reparse`); drop emptied tables."""
    await archive_reparsed_items(conn, now=utc_now())
    await conn.execute(f"DELETE FROM items WHERE request_id IN ({_REPARSED})")
    marks = ", ".join("?" * len(CALLBACK_ERROR_KINDS))
    await conn.execute(
        f"DELETE FROM errors WHERE kind IN ({marks}) AND request_id IN ({_REPARSED})",
        CALLBACK_ERROR_KINDS,
    )
    await conn.execute(f"DELETE FROM item_errors WHERE request_id IN ({_REPARSED})")
    # Keys cannot be told apart by page: they are rebuilt from the items stored from here on.
    await conn.execute("DELETE FROM item_keys")
    await ItemTables().drop_emptied(conn, _REPARSED)


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
