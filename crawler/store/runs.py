"""Crawl runs in the `crawls` table: starting, resuming, starting fresh, and finishing.

Running a spider into a database that already holds its crawl resumes it: requests that a
dead run had claimed go back to pending, finished ones stay finished. `--fresh` empties the
file first; without it, a file holding another spider's crawl is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from typing import Any, Final

import aiosqlite

from crawler.errors import StorageError
from crawler.records import utc_now
from crawler.store import fingerprints
from crawler.store.item_tables import drop_item_tables
from crawler.store.schema import rollback

__all__ = [
    "CRAWL_TABLES",
    "RELEASE_LEASES",
    "check_spider",
    "dead_runs",
    "finish_run",
    "new_run",
    "pid_alive",
    "release_leases",
    "start_run",
]

CRAWL_TABLES: Final = (
    "fetches",
    "item_history",
    "links",
    "items",
    "item_keys",
    "item_errors",
    "errors",
    "robots",
    "pages",
    "requests",
    "hosts",
    "crawls",
)
"""The tables `--fresh` empties (besides the item tables, and in a SQLite file the set of
requests' fingerprints: crawler.store.fingerprints), those that point at others first."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is alive (not ended, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def check_spider(spiders: set[str], spider: str, *, fresh: bool, target: str) -> None:
    """Refuse to run `spider` into a database whose crawls (of `spiders`) are another
    spider's, unless `fresh` (then it is emptied first); `target` names it: "file",
    "database".

    Raises:
        StorageError: the database holds another spider's crawl and `fresh` is false.
    """
    if spiders - {spider} and not fresh:
        others = ", ".join(sorted(spiders - {spider}))
        raise StorageError(
            f"the database holds a crawl of spider {others!r}, not {spider!r}; "
            f"use --fresh to start over or choose another {target} with -o"
        )


def new_run(spider: str, settings: dict[str, Any], hostname: str) -> tuple[object, ...]:
    """A new run's `crawls` values: spider, started_at, settings (JSON), pid, hostname and
    heartbeat_at; its status is `running`."""
    return (
        spider,
        utc_now(),
        json.dumps(settings, default=str),
        os.getpid(),
        hostname,
        time.time(),
    )


def dead_runs(rows: Iterable[Iterable[Any]]) -> list[int]:
    """The ids of the running runs of this machine whose process is gone, of (id, pid) rows."""
    return [int(run_id) for run_id, pid in rows if pid is None or not pid_alive(int(pid))]


def _zombie(pid: int) -> bool:
    """Whether process `pid` has ended but was not waited for yet (Linux; elsewhere False).

    kill(pid, 0) succeeds on such a process. A worker of `crawl --processes` whose parent
    was killed ends as a zombie of init, which in a container may reap it seconds later or
    never: its run would keep its leases until they expire.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[:1] == [b"Z"]
    except OSError:
        return False


async def start_run(
    conn: aiosqlite.Connection, *, spider: str, settings: dict[str, Any], fresh: bool
) -> int:
    """Record a new run and return its id, after recovering the leases of dead runs.

    Raises:
        StorageError: the database holds another spider's crawl and `fresh` is false.
    """
    hostname = socket.gethostname()
    await conn.execute("BEGIN IMMEDIATE")
    try:
        spiders = await conn.execute_fetchall("SELECT DISTINCT spider FROM crawls")
        check_spider({row[0] for row in spiders}, spider, fresh=fresh, target="file")
        if fresh:
            await drop_item_tables(conn)
            for table in CRAWL_TABLES:
                await conn.execute(f"DELETE FROM {table}")
            await conn.execute("UPDATE frontier_counts SET admitted = 0")
            for sql in fingerprints.EMPTY:  # the set of requests' fingerprints
                await conn.execute(sql)
        await _recover_dead_runs(conn, hostname)
        cursor = await conn.execute(
            "INSERT INTO crawls (spider, started_at, status, settings, pid, hostname, heartbeat_at)"
            " VALUES (?, ?, 'running', ?, ?, ?, ?)",
            new_run(spider, settings, hostname),
        )
        run_id = cursor.lastrowid
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise
    assert run_id is not None  # an INSERT always sets lastrowid
    return run_id


async def _recover_dead_runs(conn: aiosqlite.Connection, hostname: str) -> None:
    """Mark runs of this machine whose process is gone as crashed and free their leases.

    Runs on other machines keep their leases until these expire (see claims.LEASE_SECONDS).
    """
    rows = await conn.execute_fetchall(
        "SELECT id, pid FROM crawls WHERE status = 'running' AND hostname = ?", (hostname,)
    )
    for run_id in dead_runs(rows):
        await conn.execute(
            "UPDATE crawls SET status = 'crashed', finished_at = coalesce(finished_at, ?) "
            "WHERE id = ?",
            (utc_now(), run_id),
        )
        await release_leases(conn, run_id)


RELEASE_LEASES: Final = (
    "UPDATE requests SET lease_owner = NULL, lease_expires = NULL "
    "WHERE lease_owner = ? AND state = 'pending'"
)
"""Return a run's leased requests (through `requests_leased`: the rows it holds)."""


async def release_leases(conn: aiosqlite.Connection, run_id: int) -> None:
    """Return a run's claimed but unfinished requests to the frontier."""
    await conn.execute(RELEASE_LEASES, (run_id,))


async def finish_run(
    conn: aiosqlite.Connection, run_id: int, *, status: str, reason: str, stats: dict[str, Any]
) -> None:
    """Record how a run ended and its final stats."""
    await conn.execute(
        "UPDATE crawls SET finished_at = ?, status = ?, reason = ?, stats = ? WHERE id = ?",
        (utc_now(), status, reason, json.dumps(stats), run_id),
    )
