"""Crawl runs on PostgreSQL (as crawler.store.runs for SQLite): starting, resuming, starting
fresh, releasing leases and finishing.

Any number of runs may be `running` at once, on any machine: each worker of a crawl is a run.
A new run on a machine marks that machine's runs whose process is gone as crashed and frees
their leases at once; runs of other machines keep theirs until they expire.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import asyncpg

from crawler.records import utc_now
from crawler.store.pg_items import drop_pg_item_tables
from crawler.store.pg_pending import fold_pending
from crawler.store.runs import CRAWL_TABLES, check_spider, dead_runs, new_run

__all__ = [
    "empty_pg_database",
    "finish_pg_run",
    "release_pg_leases",
    "start_pg_run",
]


async def start_pg_run(
    conn: asyncpg.Connection, *, spider: str, settings: dict[str, Any], fresh: bool
) -> int:
    """crawler.store.runs.start_run on PostgreSQL: one run starts at a time.

    Raises:
        StorageError: the database holds another spider's crawl and `fresh` is false.
    """
    hostname = socket.gethostname()
    async with conn.transaction():
        # One run starts at a time: `--fresh` of one worker must not empty what another
        # worker that started a moment ago already wrote.
        await conn.execute("LOCK TABLE crawls IN SHARE ROW EXCLUSIVE MODE")
        spiders = {row[0] for row in await conn.fetch("SELECT DISTINCT spider FROM crawls")}
        check_spider(spiders, spider, fresh=fresh, target="database")
        if fresh:
            await _empty(conn)
        await _recover_dead_runs(conn, hostname)
        await fold_pending(conn)
        run_id = await conn.fetchval(
            "INSERT INTO crawls (spider, started_at, status, settings, pid, hostname, "
            "heartbeat_at) VALUES ($1, $2, 'running', $3::jsonb, $4, $5, $6) RETURNING id",
            *new_run(spider, settings, hostname),
        )
    return int(run_id)


async def empty_pg_database(conn: asyncpg.Connection) -> None:
    """Empty every table of the crawl (`--fresh` of `--processes`, before the workers)."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE crawls IN SHARE ROW EXCLUSIVE MODE")
        await _empty(conn)


async def _empty(conn: asyncpg.Connection) -> None:
    await drop_pg_item_tables(conn)
    await conn.execute(f"TRUNCATE {', '.join(CRAWL_TABLES)} RESTART IDENTITY")
    await conn.execute("UPDATE frontier_counts SET admitted = 0")
    await conn.execute("DELETE FROM frontier_pending WHERE backend != 0")
    await conn.execute("UPDATE frontier_pending SET pending = 0")


async def _recover_dead_runs(conn: asyncpg.Connection, hostname: str) -> None:
    rows = await conn.fetch(
        "SELECT id, pid FROM crawls WHERE status = 'running' AND hostname = $1", hostname
    )
    dead = dead_runs(rows)
    if not dead:
        return
    await conn.execute(
        "UPDATE crawls SET status = 'crashed', finished_at = coalesce(finished_at, $1) "
        "WHERE id = ANY($2::bigint[])",
        utc_now(),
        dead,
    )
    await conn.execute(
        "UPDATE requests SET lease_owner = NULL, lease_expires = NULL "
        "WHERE lease_owner = ANY($1::bigint[]) AND state = 'pending'",
        dead,
    )


async def release_pg_leases(conn: asyncpg.Connection, run_id: int) -> None:
    """Return a run's claimed but unfinished requests to the frontier."""
    await conn.execute(
        "UPDATE requests SET lease_owner = NULL, lease_expires = NULL "
        "WHERE lease_owner = $1 AND state = 'pending'",
        run_id,
    )


async def finish_pg_run(
    conn: asyncpg.Connection, run_id: int, *, status: str, reason: str, stats: dict[str, Any]
) -> None:
    """Record how a run ended and its final stats."""
    await conn.execute(
        "UPDATE crawls SET finished_at = $1, status = $2, reason = $3, stats = $4::jsonb "
        "WHERE id = $5",
        utc_now(),
        status,
        reason,
        json.dumps(stats),
        run_id,
    )
