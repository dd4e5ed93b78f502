"""The hostile-web invariant, checked after a crawl: every URL accounted for, stats = tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import rows, scalar


def assert_crawl_invariant(db: Path) -> dict[str, Any]:
    """Assert that every discovered URL is in `requests` in a terminal state, that the last
    run's `crawls.stats` counts equal the tables' counts, and that the file is intact.

    Returns the run's stats. Assumes a single finished run in the file.
    """
    assert scalar(db, "PRAGMA integrity_check") == "ok"
    assert (
        scalar(db, "SELECT count(*) FROM requests WHERE state NOT IN ('done', 'failed', 'skipped')")
        == 0
    )
    assert scalar(db, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
    # every link on every page was either admitted or refused with a recorded reason
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
    stats: dict[str, Any] = json.loads(
        scalar(db, "SELECT stats FROM crawls ORDER BY id DESC LIMIT 1")
    )
    assert stats["pages"] == scalar(db, "SELECT count(*) FROM pages")
    assert stats["items"] == scalar(db, "SELECT count(*) FROM items")
    assert stats["requests_done"] == scalar(
        db, "SELECT count(*) FROM requests WHERE state = 'done'"
    )
    assert stats["requests_failed"] == scalar(
        db, "SELECT count(*) FROM requests WHERE state = 'failed'"
    )
    assert stats["errors"] == dict(rows(db, "SELECT kind, count(*) FROM errors GROUP BY kind"))
    assert stats["statuses"] == {
        str(k): v for k, v in rows(db, "SELECT status, count(*) FROM pages GROUP BY status")
    }
    stored_skips = dict(
        rows(db, "SELECT reason, count(*) FROM requests WHERE state = 'skipped' GROUP BY reason")
    )
    assert {k: v for k, v in stats["skipped"].items() if k != "duplicate"} == stored_skips
    return stats
