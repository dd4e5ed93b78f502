"""The runs of one crawl command, read back from its database: the id of the newest run
(`last_run_id`), and the runs of `crawl --processes N` summed into one summary
(`combined_summary`, which counts from the tables what a killed worker could not record).
Works on an SQLite file and on a PostgreSQL URL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawler.errors import StorageError
from crawler.store.pg_url import with_pg_errors

if TYPE_CHECKING:
    from crawler.store.pg_read import PgReader, ReadConnection

__all__ = ["combined_summary", "last_run_id"]


def last_run_id(db: Path | str) -> int:
    """Return the id of the newest run recorded in `db` (0 when there is none yet)."""
    if isinstance(db, str):
        from crawler.store.pg_read import PgReader  # loads asyncpg (crawler.store.pg_url)

        try:
            reader = PgReader(db)
        except StorageError:
            return 0  # the crawl itself reports it
        try:
            return int(reader.execute("SELECT coalesce(max(id), 0) FROM crawls").fetchall()[0][0])
        except with_pg_errors():
            return 0
        finally:
            reader.close()
    if not db.is_file():
        return 0
    try:
        # closing(): a connection's own `with` only commits, and one left to the garbage
        # collector is still open when the workers are forked.
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM crawls").fetchone()[0])
    except sqlite3.Error:
        return 0  # not a crawl database: the crawl itself reports that


def combined_summary(db: Path | str, after_run: int) -> tuple[str, dict[str, Any]]:
    """Sum the stats of the runs recorded after run `after_run` into one summary.

    Returns the overall status (the worst of the runs) and the summed stats.
    """
    with contextlib.closing(_open(db)) as conn:
        found = conn.execute(
            "SELECT id, status, stats FROM crawls WHERE id > ? ORDER BY id", (after_run,)
        ).fetchall()
        pending = conn.execute("SELECT count(*) FROM requests WHERE state = 'pending'").fetchone()[
            0
        ]
        # A worker that was killed recorded no stats: what it stored is counted from the
        # tables, so that the summary does not leave its pages and items out.
        runs = [
            json.loads(stats) if stats else _stored_by(conn, int(run_id))
            for run_id, _, stats in found
        ]
    statuses = [status for _, status, _ in found]
    total: dict[str, Any] = {"processes": len(runs)}
    for key in (
        "pages",
        "items",
        "requests_admitted",
        "requests_done",
        "requests_failed",
        "bytes_received",
        "retries",
        "rescheduled",
        "strings_replaced",
        "requeued",
    ):
        total[key] = sum(int(run.get(key, 0)) for run in runs)
    for key in ("items_by_type", "items_dropped", "skipped", "errors", "statuses", "refetched"):
        merged: Counter[str] = Counter()
        for run in runs:
            merged.update(run.get(key, {}))
        total[key] = dict(sorted(merged.items()))
    total["requests_pending"] = pending
    total["duration_s"] = max((float(run.get("duration_s", 0)) for run in runs), default=0.0)
    total["pages_per_second"] = (
        round(total["pages"] / total["duration_s"], 1) if total["duration_s"] else 0.0
    )
    order = ["failed", "crashed", "interrupted", "stopped", "running", "finished"]
    status = min(statuses, key=order.index) if statuses else "failed"
    return status, total


def _open(db: Path | str) -> ReadConnection:
    if isinstance(db, str):
        from crawler.store.pg_read import PgReader  # loads asyncpg (crawler.store.pg_url)

        return PgReader(db)
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _stored_by(conn: sqlite3.Connection | PgReader, run_id: int) -> dict[str, Any]:
    """The part of a run's stats the tables can tell (for a run that recorded none)."""
    pages, received = conn.execute(
        "SELECT count(*), coalesce(sum(size_bytes), 0) FROM pages WHERE crawl_id = ?", (run_id,)
    ).fetchone()
    by_type = dict(
        conn.execute(
            "SELECT type, count(*) FROM items WHERE crawl_id = ? GROUP BY type", (run_id,)
        ).fetchall()
    )
    statuses = conn.execute(
        "SELECT status, count(*) FROM pages WHERE crawl_id = ? GROUP BY status", (run_id,)
    ).fetchall()
    return {
        "pages": int(pages),
        "items": sum(by_type.values()),
        "items_by_type": by_type,
        "bytes_received": int(received),
        "statuses": {str(status): int(n) for status, n in statuses},
    }
