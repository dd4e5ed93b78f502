"""The state of a crawl database, read while a crawl may be running (`crawler status`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection


__all__ = ["crawl_status"]


def crawl_status(conn: ReadConnection) -> dict[str, Any]:
    """Return request counts by state, in-flight leases, the latest run and its last activity.

    Works on a read-only connection while another process writes (the file is in WAL mode).
    """
    now = time.time()
    counts = dict(conn.execute("SELECT state, count(*) FROM requests GROUP BY state").fetchall())
    in_flight, delayed = conn.execute(
        "SELECT count(*) FILTER (WHERE lease_expires > :now),"
        " count(*) FILTER (WHERE not_before > :now)"
        " FROM requests WHERE state = 'pending'",
        {"now": now},
    ).fetchone()
    runs = conn.execute(
        "SELECT id, spider, status, started_at, finished_at, heartbeat_at FROM crawls ORDER BY id"
    ).fetchall()
    last_page = conn.execute("SELECT max(fetched_at) FROM pages").fetchone()[0]
    latest = runs[-1] if runs else None
    return {
        "spider": latest[1] if latest else None,
        "runs": len(runs),
        "latest_run": {
            "id": latest[0],
            "status": latest[2],
            "started_at": latest[3],
            "finished_at": latest[4],
            "seconds_since_heartbeat": round(now - latest[5], 1) if latest[5] else None,
        }
        if latest
        else None,
        "requests": {
            state: counts.get(state, 0) for state in ("pending", "done", "failed", "skipped")
        },
        "in_flight": in_flight,
        "waiting_for_retry": delayed,
        "pages": conn.execute("SELECT count(*) FROM pages").fetchone()[0],
        "items": conn.execute("SELECT count(*) FROM items").fetchone()[0],
        "errors": conn.execute("SELECT count(*) FROM errors").fetchone()[0],
        "last_page_at": last_page,
    }
