"""The hostile-web invariant, checked after a crawl: every URL accounted for, stats = tables."""

from __future__ import annotations

import json
from typing import Any

from tests.databases import Target, assert_intact, rows, scalar

__all__ = ["assert_all_accounted_for", "assert_crawl_invariant"]


def assert_all_accounted_for(db: Target) -> None:
    """Assert that the database is intact and that every discovered URL is in `requests`, in a
    terminal state, with a reason when it was not crawled, and that no lease is left.

    Holds after any number of runs that ended (finished, stopped, failed or interrupted and
    resumed to the end). "Discovered" means linked from a stored page (the `links` table),
    so it assumes a spider that follows every link, or `store_links` off.
    """
    assert_intact(db)
    states = dict(rows(db, "SELECT state, count(*) FROM requests GROUP BY state"))
    assert set(states) <= {"done", "failed", "skipped"}, states
    assert scalar(db, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
    missing = rows(
        db, "SELECT DISTINCT to_url FROM links WHERE to_url NOT IN (SELECT url FROM requests)"
    )
    assert missing == [], missing[:5]
    assert (
        scalar(
            db,
            "SELECT count(*) FROM requests WHERE state IN ('failed', 'skipped') AND reason IS NULL",
        )
        == 0
    )


def assert_crawl_invariant(db: Target) -> dict[str, Any]:
    """Assert `assert_all_accounted_for`, and that the run's `crawls.stats` counts equal the
    tables' counts (pages, items, requests by state, errors by kind, statuses, skips by
    reason).

    Returns the run's stats. Assumes a single finished run in the file.
    """
    assert_all_accounted_for(db)
    assert rows(db, "SELECT status FROM crawls") == [("finished",)]
    stats: dict[str, Any] = json.loads(scalar(db, "SELECT stats FROM crawls"))
    assert stats["pages"] == scalar(db, "SELECT count(*) FROM pages")
    assert stats["items"] == scalar(db, "SELECT count(*) FROM items")
    assert stats["requests_done"] == scalar(
        db, "SELECT count(*) FROM requests WHERE state = 'done'"
    )
    assert stats["requests_failed"] == scalar(
        db, "SELECT count(*) FROM requests WHERE state = 'failed'"
    )
    assert stats["requests_pending"] == 0
    assert stats["errors"] == dict(rows(db, "SELECT kind, count(*) FROM errors GROUP BY kind"))
    assert stats["statuses"] == {
        str(k): v for k, v in rows(db, "SELECT status, count(*) FROM pages GROUP BY status")
    }
    stored_skips = dict(
        rows(db, "SELECT reason, count(*) FROM requests WHERE state = 'skipped' GROUP BY reason")
    )
    assert {k: v for k, v in stats["skipped"].items() if k != "duplicate"} == stored_skips
    return stats
