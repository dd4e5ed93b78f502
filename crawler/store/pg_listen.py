"""Commits other workers announce on PostgreSQL: a worker whose claims find every pending
request leased by others waits for one of them to add work or free its leases, and is told.

A writer whose batch admits new pending requests, and a run that ends and frees its leases,
`NOTIFY` on `CHANNEL` in the same transaction (the server delivers it at the commit). Each
run `LISTEN`s on a connection of its own (the writer's is busy with batches) and wakes its
feeder on every notice (crawler.frontier.feeder `Feeder.wake`), which then polls slowly
while others hold the work: what no commit announces (a lease that expires, a request that
falls due) is still found by the feeder's own timers. When that connection is lost the
feeder is woken too and polls quickly again until the listener has reconnected (with backoff,
as crawler.store.pg_link).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from contextlib import suppress
from typing import Final, final

import asyncpg

from crawler.store.pg_schema import connect_pg, is_connection_loss
from crawler.store.pg_url import redact

__all__ = ["CHANNEL", "NOTIFY", "PgListener"]

logger = logging.getLogger(__name__)

CHANNEL: Final = "crawler_frontier"
NOTIFY: Final = f"NOTIFY {CHANNEL}"
"""Run in a transaction that adds pending requests or frees leases."""
_FIRST_BACKOFF: Final = 0.2
_MAX_BACKOFF: Final = 10.0


@final
class PgListener:
    """Calls `wake` on every notice on `CHANNEL`, and when it starts or stops listening."""

    def __init__(self, url: str, wake: Callable[[], None]) -> None:
        self._url = url
        self._wake = wake
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and listen in a task of its own (reconnecting while the run lasts)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="pg-listener")

    def listening(self) -> bool:
        """Whether notices reach this run now."""
        return self._conn is not None and not self._conn.is_closed()

    async def _listen(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            try:
                conn = await connect_pg(self._url)
            except Exception as exc:
                if not is_connection_loss(exc):
                    logger.warning("cannot listen on %s: %s", redact(self._url), exc)
                    return  # the feeder keeps polling as without notices
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(_MAX_BACKOFF, backoff * 2)
                continue
            backoff = _FIRST_BACKOFF
            self._lost.clear()
            conn.add_termination_listener(self._on_lost)
            try:
                await conn.add_listener(CHANNEL, self._on_notice)
            except Exception as exc:
                conn.terminate()
                if not is_connection_loss(exc):
                    logger.warning("cannot listen on %s: %s", redact(self._url), exc)
                    return
                continue
            self._conn = conn
            self._wake()  # commits made while nobody listened
            await self._lost.wait()
            self._conn = None
            self._wake()  # back to polling quickly

    def _on_notice(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._wake()

    def _on_lost(self, conn: object) -> None:
        self._lost.set()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None
