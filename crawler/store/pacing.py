"""Crawl-wide spacing of a delayed host's requests among processes sharing one SQLite file.

Each process paces the hosts it holds requests of (crawler.fetch.politeness), but with
`crawl --processes N` two processes may hold requests of the same host and start them closer
than its delay. So right before an attempt at a host with a fixed delay (`delay_per_host`,
robots.txt Crawl-delay), `SqlitePacer` takes the host's next turn in one statement,
`hosts.not_before` moved one delay past the later of itself and now, and waits for the turn
it got (each turn is logged at DEBUG level): PostgreSQL's design (crawler.store.pg_pacing),
with the same `TURN_MARGIN`.
`not_before` is already what the processes share about a host (a back-off, and the next
start each writes with its results, never moving it back), and claims leave a host alone
while it has not passed (crawler.store.claims).

What a turn costs: one write of one row on a connection of its own, so never inside the
writer's batches; SQLite has one writer at a time, so a turn that comes while some process
commits a batch waits for that commit (milliseconds to tens of milliseconds: a turn is
needed only once a delay, and the delay is usually far longer), and holds the write lock
for well under a millisecond, which is all a writer can wait for it. Hosts without a fixed
delay cost nothing. Nor does a run that is alone on its file, past its first `JOIN_GRACE`
seconds (when the processes started with it may not have recorded their runs yet): it
takes turns only while another run is live (`running`, with a heartbeat of the last
`LEASE_SECONDS`), which it reads at most every `PEERS_EVERY` seconds. So a run started
later on the same file is paced with it from the next look, until then by the next start
each wrote with its results (a request or two may come sooner than the delay).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Final, final

import aiosqlite

from crawler.store.claims import LEASE_SECONDS
from crawler.store.schema import connect, storage_error

__all__ = ["JOIN_GRACE", "PEERS_EVERY", "TURN_MARGIN", "SqlitePacer"]

logger = logging.getLogger(__name__)

TURN_MARGIN: Final = 0.05
"""Seconds added to a delay between two processes' turns, as on PostgreSQL: from taking its
turn to reaching the host, a request waits for its event loop (busy parsing other pages) by
a few tens of milliseconds on a busy machine, and a later process that waits less would
otherwise reach the host sooner than the delay after an earlier one."""
PEERS_EVERY: Final = 1.0
"""Least seconds between two reads of whether another run shares the file."""
JOIN_GRACE: Final = 5.0
"""Seconds from the start of a run during which it takes turns without asking: processes
started together (`--processes N`) may not have recorded their runs yet when the first
turns are due."""

_TAKE_TURN: Final = (
    "UPDATE hosts SET not_before = "
    "max(coalesce(not_before, 0), (julianday('now') - 2440587.5) * 86400.0) + ?2 "
    "WHERE host = ?1 RETURNING not_before - ?2"
)
"""The host's next turn, taken at the time the statement runs (unix seconds, to the
millisecond): after any wait for the write lock, which a time passed in would not count."""
_PEERS: Final = (
    "SELECT EXISTS (SELECT 1 FROM crawls WHERE id != ? AND status = 'running' "
    "AND heartbeat_at >= ?)"
)


@final
class SqlitePacer:
    """Takes crawl-wide turns for delayed hosts (call it as `pacer(host, delay)`) while
    another run shares the file."""

    def __init__(self, path: Path, run_id: int, *, grace: float = JOIN_GRACE) -> None:
        """`grace`: seconds from now during which turns are taken without asking whether
        another run shares the file."""
        self._path = path
        self._run_id = run_id
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._shared = True
        self._peers_read_at = time.monotonic() + grace - PEERS_EVERY

    async def __call__(self, host: str, delay: float) -> None:
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await connect(self._path)
                if time.monotonic() - self._peers_read_at >= PEERS_EVERY:
                    self._shared = await self._peers(self._conn)
                    self._peers_read_at = time.monotonic()
                if not self._shared:
                    return
                params = (host, delay + TURN_MARGIN)
                async with self._conn.execute(_TAKE_TURN, params) as cursor:
                    row = await cursor.fetchone()
            except sqlite3.Error as exc:
                raise storage_error(self._path, exc, "write") from None
        if row is None:
            return
        turn = float(row[0])
        wait = turn - time.time()
        logger.debug("%s: crawl-wide turn at %.6f (time.time), in %.3fs", host, turn, wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _peers(self, conn: aiosqlite.Connection) -> bool:
        """Whether another run is live on the file."""
        async with conn.execute(_PEERS, (self._run_id, time.time() - LEASE_SECONDS)) as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def close(self) -> None:
        """Close its connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
