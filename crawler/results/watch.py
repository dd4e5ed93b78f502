"""What `crawler dashboard` shows of a crawl: the queries it runs and the JSON it makes of
their rows.

The reading is split in two so that another database can be read the same way: `queries`
returns plain SQL (that SQLite and PostgreSQL both understand; `?` marks a parameter) and
`dashboard_state` turns the rows of each query into the page's data. Whoever runs them (the
dashboard server, crawler.cli.dashboard) runs them all in one read transaction, so that the
numbers of one answer agree with each other.

The counts come from the run's last `stats_ts` row (crawler.store.samples), written in the
same transaction as the rows it counts; a run without one (sampling off) shows the summary
stored when it ended.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["MAX_POINTS", "Query", "dashboard_state", "queries"]

Query = tuple[str, tuple[object, ...]]
"""SQL with `?` parameters, and the parameters."""

MAX_POINTS: Final = 1200
"""Most points of a chart: a longer series is thinned evenly (its last point always kept)."""

_RUN: Final = "COALESCE(?, (SELECT max(id) FROM crawls))"
_SAMPLE_COLUMNS: Final = (
    "id, at, elapsed_s, pages, items, errors, failed, skipped, bytes, in_flight, queued, "
    "pages_per_s, items_per_s, errors_per_s, bytes_per_s, errors_by_kind, skipped_by_reason, "
    "statuses"
)
_SERIES_COLUMNS: Final = "id, at, elapsed_s, pages, errors, items, pages_per_s, errors_per_s"
_HOST_COLUMNS: Final = (
    "host, in_flight, delay_s, concurrency, paused_s, pages, errors, failed, throttled, "
    "avg_ms, last_status, updated_at"
)
_RUN_COLUMNS: Final = "id, spider, started_at, finished_at, status, reason, stats"
_PAGE_COLUMNS: Final = "id, url, status, content_type, size_bytes, elapsed_ms, fetched_at"
_ERROR_COLUMNS: Final = "id, url, kind, message, created_at"
_LISTED: Final = frozenset({"pages", "items", "duration_s", "pages_per_second"})
LIMIT: Final = 50
"""Rows of each table shown (hosts, runs); the latest pages and errors show fewer."""


def queries(run: int | None, *, samples: bool = True) -> dict[str, Query]:
    """The queries of one dashboard answer for `run` (None: the latest run). Without
    `samples` (a file older than the `stats_ts` table) only what every crawl has."""
    one = (run,)
    found: dict[str, Query] = {
        "run": (f"SELECT {_RUN_COLUMNS} FROM crawls WHERE id = {_RUN}", one),
        "runs": (f"SELECT {_RUN_COLUMNS} FROM crawls ORDER BY id DESC LIMIT {LIMIT}", ()),
        "pages": (
            f"SELECT {_PAGE_COLUMNS} FROM pages WHERE crawl_id = {_RUN} ORDER BY id DESC LIMIT 15",
            one,
        ),
        "errors": (
            f"SELECT {_ERROR_COLUMNS} FROM errors WHERE crawl_id = {_RUN} "
            "ORDER BY id DESC LIMIT 10",
            one,
        ),
    }
    if not samples:
        return found
    found["sample"] = (
        f"SELECT {_SAMPLE_COLUMNS} FROM stats_ts WHERE crawl_id = {_RUN} ORDER BY id DESC LIMIT 1",
        one,
    )
    found["series"] = (
        f"SELECT {_SERIES_COLUMNS} FROM (SELECT {_SERIES_COLUMNS}, "
        "row_number() OVER (ORDER BY id DESC) - 1 AS back, count(*) OVER () AS total "
        f"FROM stats_ts WHERE crawl_id = {_RUN}) AS s "
        "WHERE back % ((total + ? - 1) / ?) = 0 ORDER BY id",
        (run, MAX_POINTS, MAX_POINTS),
    )
    found["hosts"] = (
        # throttled (cooling down now, or answered 429/503), then failing, then slowest
        f"SELECT {_HOST_COLUMNS} FROM host_stats WHERE crawl_id = {_RUN} "
        "ORDER BY CASE WHEN paused_s > 0 THEN 1 ELSE 0 END DESC, throttled DESC, "
        "failed DESC, errors DESC, avg_ms DESC, host LIMIT " + str(LIMIT),
        one,
    )
    found["host_count"] = (f"SELECT count(*) FROM host_stats WHERE crawl_id = {_RUN}", one)
    return found


def dashboard_state(rows: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, Any]:
    """The page's data from the rows of `queries` (each a sequence of column values)."""
    runs = [_run(row) for row in rows["runs"]]
    for listed in runs:  # the list shows each run's pages and duration, not its whole summary
        listed["stats"] = {k: v for k, v in listed["stats"].items() if k in _LISTED}
    run = _run(rows["run"][0]) if rows["run"] else None
    sample_rows = rows.get("sample") or []
    sample = _record(_SAMPLE_COLUMNS, sample_rows[0]) if sample_rows else None
    totals = _totals(sample, run)
    return {
        "run": run,
        "runs": runs,
        "sample_id": sample["id"] if sample else None,
        "totals": totals,
        "errors_by_kind": _parsed(sample, "errors_by_kind", run, "errors"),
        "skipped_by_reason": _parsed(sample, "skipped_by_reason", run, "skipped"),
        "statuses": _parsed(sample, "statuses", run, "statuses"),
        "series": [_record(_SERIES_COLUMNS, row) for row in rows.get("series", [])],
        "hosts": [_record(_HOST_COLUMNS, row) for row in rows.get("hosts", [])],
        "host_count": int(rows["host_count"][0][0]) if rows.get("host_count") else 0,
        "pages": [_record(_PAGE_COLUMNS, row) for row in rows["pages"]],
        "errors": [_record(_ERROR_COLUMNS, row) for row in rows["errors"]],
    }


def _record(columns: str, row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(columns.split(", "), row, strict=True))


def _run(row: Sequence[Any]) -> dict[str, Any]:
    """A `crawls` row, its summary parsed (pages, pages/s of a run that ended)."""
    run = _record(_RUN_COLUMNS, row)
    run["stats"] = _object(run["stats"])
    return run


def _totals(sample: dict[str, Any] | None, run: dict[str, Any] | None) -> dict[str, Any]:
    """The run's counts: its last sample's, else the summary it stored at its end."""
    if sample is not None:
        names = ("pages", "items", "errors", "failed", "skipped", "bytes", "in_flight", "queued")
        totals: dict[str, Any] = {name: sample[name] for name in names}
        running = run is not None and run["status"] == "running"
        elapsed = sample["elapsed_s"]
        # a running crawl's rate now; a finished one's over the whole run
        average = round(sample["pages"] / elapsed, 2) if elapsed > 0 else 0.0
        totals["pages_per_s"] = sample["pages_per_s"] if running else average
        totals["elapsed_s"] = sample["elapsed_s"]
        totals["at"] = sample["at"]
        return totals
    stats = run["stats"] if run else {}
    return {
        "pages": stats.get("pages", 0),
        "items": stats.get("items", 0),
        "errors": sum(stats.get("errors", {}).values()),
        "failed": stats.get("requests_failed", 0),
        "skipped": sum(stats.get("skipped", {}).values()),
        "bytes": stats.get("bytes_received", 0),
        "in_flight": 0,
        "queued": stats.get("requests_pending", 0),
        "pages_per_s": stats.get("pages_per_second", 0.0),
        "elapsed_s": stats.get("duration_s", 0.0),
        "at": run["finished_at"] if run else None,
    }


def _parsed(
    sample: dict[str, Any] | None, column: str, run: dict[str, Any] | None, key: str
) -> dict[str, int]:
    """A JSON breakdown of the sample (else of the run's summary), largest first."""
    if sample is not None:
        counts = _object(sample[column])
    else:
        counts = run["stats"].get(key, {}) if run else {}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _object(text: object) -> dict[str, Any]:
    """A JSON object stored as text ({} for NULL or anything else)."""
    if not isinstance(text, str):
        return text if isinstance(text, dict) else {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
