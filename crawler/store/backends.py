"""The crawl database as a run sees it, whatever holds it: an SQLite file (the embedded
default) or a PostgreSQL database shared by workers on many machines.

`open_store(target)` opens either (a URL `postgresql://…` or `postgres://…` names a
PostgreSQL database, anything else is a file path) and returns a `CrawlStore`: the few
things a run does besides writing batches (start and end the run, declare item tables,
space delayed hosts' requests across workers) and the writer of its batches
(crawler.store.writer's `Storage`, crawler.store.pg_writer's `PgStorage`). A PostgreSQL
database is `PgStore` (crawler.store.pg_store), imported when one is opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, final

import aiosqlite

from crawler.errors import StorageError
from crawler.fetch.politeness import Hosts, Pacer
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.stats import Stats
from crawler.store.item_tables import declare_item_tables
from crawler.store.pacing import SqlitePacer
from crawler.store.pg_url import is_postgres_url, redact, with_pg_driver_errors
from crawler.store.refresh import fetched_hosts, requeue_due
from crawler.store.runs import finish_run, release_leases, start_run
from crawler.store.schema import free_reserve, hold_reserve, open_database, rollback
from crawler.store.writer import BatchWriter, Storage

__all__ = ["CrawlStore", "SqliteStore", "describe_target", "open_store", "store_errors"]


def store_errors() -> tuple[type[Exception], ...]:
    """What a store's calls raise when the storage fails (beside our own StorageError)."""
    return with_pg_driver_errors(StorageError, sqlite3.Error, OSError)


class CrawlStore(Protocol):
    """One run's access to its crawl database."""

    async def start_run(self, *, spider: str, settings: dict[str, Any], fresh: bool) -> int:
        """Record a new run (recovering dead runs' leases) and return its id."""

    def writer(
        self,
        *,
        run_id: int,
        settings: Settings,
        stats: Stats,
        on_committed: Callable[[int], None],
        hosts: Hosts | None = None,
    ) -> BatchWriter:
        """The writer of this run's batches; `hosts`, the crawl's politeness state, is told
        the hosts whose snapshots were committed (`Hosts.saved`)."""

    async def declare_item_tables(self, spider: Spider) -> None:
        """Create the tables of the spider's `item_types`."""

    async def end_run(
        self, run_id: int, *, status: str, reason: str, stats: dict[str, Any]
    ) -> None:
        """Roll back a half-written batch, free the run's leases, record how it ended."""

    async def fetched_hosts(self) -> list[str]:
        """The hosts of the requests that were fetched (re-crawls)."""

    async def requeue_due(self, *, cutoff: str | None, host_cutoffs: Mapping[str, str]) -> int:
        """Set the requests due for a re-fetch back to pending; return how many
        (crawler.store.refresh.requeue_due)."""

    def listen(self, wake: Callable[[], None]) -> Callable[[], bool] | None:
        """Call `wake` when another process's commit adds pending requests or frees leases;
        return whether that works at the moment, or None where commits are not announced."""

    def pacer(self) -> Pacer | None:
        """Crawl-wide spacing of delayed hosts' requests, where other processes or machines
        may share the database (crawler.fetch.politeness `Hosts.pacer`); after
        `start_run`."""

    async def close(self) -> None:
        """Close the connection."""


def describe_target(target: str | Path) -> str:
    """The database as messages name it (a URL without its password)."""
    return redact(target) if isinstance(target, str) and is_postgres_url(target) else str(target)


async def open_store(target: str | Path) -> CrawlStore:
    """Open the crawl database `target`, creating or upgrading it.

    Raises:
        StorageError: it cannot be opened (a StorageFailure when the storage fails).
    """
    if isinstance(target, str) and is_postgres_url(target):
        from crawler.store.pg_store import open_pg_store  # loads asyncpg (crawler.store.pg_url)

        return await open_pg_store(target)
    path = Path(target)
    conn = await open_database(path)
    hold_reserve(path)  # given back to record how the run ends, even on a full disk
    return SqliteStore(conn, path)


@final
class SqliteStore:
    """A run's SQLite file."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._pacer: SqlitePacer | None = None

    async def start_run(self, *, spider: str, settings: dict[str, Any], fresh: bool) -> int:
        run_id = await start_run(self.conn, spider=spider, settings=settings, fresh=fresh)
        self._pacer = SqlitePacer(self.path, run_id)
        return run_id

    def writer(
        self,
        *,
        run_id: int,
        settings: Settings,
        stats: Stats,
        on_committed: Callable[[int], None],
        hosts: Hosts | None = None,
    ) -> BatchWriter:
        return Storage(
            self.conn,
            run_id=run_id,
            settings=settings,
            stats=stats,
            on_committed=on_committed,
            on_hosts_saved=None if hosts is None else hosts.saved,
            hosts=hosts,
        )

    async def declare_item_tables(self, spider: Spider) -> None:
        await declare_item_tables(self.conn, spider)

    async def end_run(
        self, run_id: int, *, status: str, reason: str, stats: dict[str, Any]
    ) -> None:
        free_reserve(self.path)
        await rollback(self.conn)  # a cancelled writer's half-written batch
        await release_leases(self.conn, run_id)
        await finish_run(self.conn, run_id, status=status, reason=reason, stats=stats)

    async def fetched_hosts(self) -> list[str]:
        return await fetched_hosts(self.conn)

    async def requeue_due(self, *, cutoff: str | None, host_cutoffs: Mapping[str, str]) -> int:
        return await requeue_due(self.conn, cutoff=cutoff, host_cutoffs=host_cutoffs)

    def listen(self, wake: Callable[[], None]) -> Callable[[], bool] | None:
        return None  # processes sharing a file poll it (crawler.frontier.feeder)

    def pacer(self) -> Pacer | None:
        # turns taken only while another process shares the file (crawler.store.pacing)
        return self._pacer

    async def close(self) -> None:
        free_reserve(self.path)
        if self._pacer is not None:
            await self._pacer.close()
        await self.conn.close()
