"""Crawl-wide spacing of a delayed host's requests on PostgreSQL.

A claim leases a delayed host's requests a few at a time (crawler.store.pg_claims), but
the moment each one starts is the worker's: two workers holding requests of the same host
could start them closer than its delay. So right before an attempt at a host with a fixed
delay (`delay_per_host`, robots.txt Crawl-delay), the worker takes the host's next turn in
one statement, `hosts.not_before` moved one delay past the later of itself and now, and
waits for the turn it got (crawler.fetch.politeness `Hosts.pacer` calls it; each turn is
logged at DEBUG level). Hosts without a fixed delay cost nothing here. Turns are
`TURN_MARGIN` wider than the delay. The turns use one connection of their own (the writer's
is busy with batches), which reconnects like the writer's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final, final

import asyncpg

from crawler.store.pg_link import PgLink

__all__ = ["TURN_MARGIN", "PgPacer"]

logger = logging.getLogger(__name__)

TURN_MARGIN: Final = 0.05
"""Seconds added to a delay between two workers' turns: from taking its turn to reaching
the host, a request waits for its worker's event loop (busy parsing other pages) and its
connection, by a few tens of milliseconds on a busy machine, and a later worker that waits
less would otherwise reach the host sooner than the delay after an earlier one."""

_TAKE_TURN: Final = (
    "UPDATE hosts SET not_before = greatest(coalesce(not_before, 0), $2) + $3 "
    "WHERE host = $1 RETURNING not_before - $3"
)


@final
class PgPacer:
    """Takes crawl-wide turns for delayed hosts (call it as `pacer(host, delay)`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._link: PgLink | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, host: str, delay: float) -> None:
        async with self._lock:
            if self._link is None:
                self._link = PgLink(self._url, None)

            async def take(conn: asyncpg.Connection) -> float | None:
                turn = await conn.fetchval(_TAKE_TURN, host, time.time(), delay + TURN_MARGIN)
                return None if turn is None else float(turn)

            turn = await self._link.transaction(take)
        if turn is None:
            return
        wait = turn - time.time()
        logger.debug("%s: crawl-wide turn at %.6f (time.time), in %.3fs", host, turn, wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Close its connection."""
        if self._link is not None:
            await self._link.close()
