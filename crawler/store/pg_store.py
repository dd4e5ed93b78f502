"""A run's PostgreSQL database (crawler.store.backends `CrawlStore`): what a run does besides
writing batches, and its writer, `PgStorage`. Imported, with asyncpg, when a PostgreSQL URL
is opened (crawler.store.pg_url)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

import asyncpg

from crawler.fetch.politeness import Hosts, Pacer
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.stats import Stats
from crawler.store.batches import BatchWriter
from crawler.store.pg_items import declare_pg_item_tables
from crawler.store.pg_link import PgLink
from crawler.store.pg_listen import NOTIFY, PgListener
from crawler.store.pg_pacing import PgPacer
from crawler.store.pg_refresh import pg_fetched_hosts, pg_requeue_due
from crawler.store.pg_runs import finish_pg_run, release_pg_leases, start_pg_run
from crawler.store.pg_schema import open_pg
from crawler.store.pg_writer import PgStorage

__all__ = ["PgStore", "open_pg_store"]


async def open_pg_store(url: str) -> PgStore:
    """Open the crawl database at `url`, creating or upgrading its schema (`open_pg`)."""
    return PgStore(PgLink(url, await open_pg(url)))


@final
class PgStore:
    """A run's PostgreSQL database, through a link that reconnects."""

    def __init__(self, link: PgLink) -> None:
        self.link = link
        self._pacer = PgPacer(link.url)
        self._listener: PgListener | None = None

    async def start_run(self, *, spider: str, settings: dict[str, Any], fresh: bool) -> int:
        conn = await self.link.connection()
        return await start_pg_run(conn, spider=spider, settings=settings, fresh=fresh)

    def writer(
        self,
        *,
        run_id: int,
        settings: Settings,
        stats: Stats,
        on_committed: Callable[[int], None],
        hosts: Hosts | None = None,
    ) -> BatchWriter:
        return PgStorage(
            self.link,
            run_id=run_id,
            settings=settings,
            stats=stats,
            on_committed=on_committed,
            on_hosts_saved=None if hosts is None else hosts.saved,
        )

    async def declare_item_tables(self, spider: Spider) -> None:
        async def declare(conn: asyncpg.Connection) -> None:
            await declare_pg_item_tables(conn, spider)

        await self.link.transaction(declare)

    async def end_run(
        self, run_id: int, *, status: str, reason: str, stats: dict[str, Any]
    ) -> None:
        # No waiting for a server that went away: its leases expire, the next run on this
        # machine marks the run crashed.
        conn = await self.link.require()
        if conn.is_in_transaction():  # a cancelled writer's half-written batch
            await conn.execute("ROLLBACK")
        async with conn.transaction():
            await release_pg_leases(conn, run_id)
            await finish_pg_run(conn, run_id, status=status, reason=reason, stats=stats)
            await conn.execute(NOTIFY)  # its leases are free: a waiting worker may take them

    async def fetched_hosts(self) -> list[str]:
        return await pg_fetched_hosts(await self.link.connection())

    async def requeue_due(self, *, cutoff: str | None, host_cutoffs: Mapping[str, str]) -> int:
        conn = await self.link.connection()
        return await pg_requeue_due(conn, cutoff=cutoff, host_cutoffs=host_cutoffs)

    def listen(self, wake: Callable[[], None]) -> Callable[[], bool] | None:
        if self._listener is None:
            self._listener = PgListener(self.link.url, wake)
            self._listener.start()
        return self._listener.listening

    def pacer(self) -> Pacer | None:
        return self._pacer

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self._pacer.close()
        await self.link.close()
