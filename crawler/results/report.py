"""The summary of a crawl database (`crawler stats`), computed with SQL over the file.

Nothing here trusts the counters a run stored in `crawls.stats`: every figure is counted from
the tables, so the report is right for any file — finished, interrupted, crashed, or still
being written by a running crawl (read it over a read-only connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from rich.console import Group
from rich.table import Table

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection


__all__ = ["crawl_report", "render_report"]

TOP_HOSTS: Final = 10

_RUNS: Final = """
SELECT c.id, c.spider, c.status, c.reason, c.started_at, c.finished_at,
       round((julianday(coalesce(c.finished_at,
                                 (SELECT max(p.fetched_at) FROM pages AS p WHERE p.crawl_id = c.id),
                                 c.started_at))
              - julianday(c.started_at)) * 86400, 3) AS duration_s
FROM crawls AS c ORDER BY c.id
"""
_PAGES: Final = """
SELECT count(*), coalesce(sum(size_bytes), 0), coalesce(sum(length(body)), 0),
       round(coalesce(avg(elapsed_ms), 0), 1)
FROM pages
"""
_BREAKDOWNS: Final = {
    "requests_by_state": "SELECT state, count(*) FROM requests GROUP BY 1 ORDER BY 2 DESC, 1",
    "pages_by_status": "SELECT status, count(*) FROM pages GROUP BY 1 ORDER BY 1",
    "content_types": ("SELECT content_type, count(*) FROM pages GROUP BY 1 ORDER BY 2 DESC, 1"),
    "top_hosts": (
        "SELECT r.host, count(*) FROM pages AS p JOIN requests AS r ON r.id = p.request_id "
        f"GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP_HOSTS}"
    ),
    "pages_by_depth": "SELECT depth, count(*) FROM pages GROUP BY 1 ORDER BY 1",
    "errors_by_kind": "SELECT kind, count(*) FROM errors GROUP BY 1 ORDER BY 2 DESC, 1",
    "items_by_type": "SELECT type, count(*) FROM items GROUP BY 1 ORDER BY 2 DESC, 1",
    "invalid_items_by_type": (
        "SELECT item_type, count(*) FROM item_errors GROUP BY 1 ORDER BY 2 DESC, 1"
    ),
    "skipped_by_reason": (
        "SELECT coalesce(reason, '?'), count(*) FROM requests WHERE state = 'skipped' "
        "GROUP BY 1 ORDER BY 2 DESC, 1"
    ),
    "failed_by_reason": (
        "SELECT CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1) "
        "ELSE coalesce(reason, '?') END, count(*) FROM requests WHERE state = 'failed' "
        "GROUP BY 1 ORDER BY 2 DESC, 1"
    ),
    "item_tables": "SELECT type || ' (' || kind || ')', name FROM item_tables ORDER BY 1",
}
_TITLES: Final = {
    "requests_by_state": ("requests", "state"),
    "pages_by_status": ("pages by status", "status"),
    "content_types": ("content types", "type"),
    "top_hosts": (f"top {TOP_HOSTS} hosts", "host"),
    "pages_by_depth": ("pages by depth", "depth"),
    "errors_by_kind": ("errors", "kind"),
    "items_by_type": ("items", "type"),
    "invalid_items_by_type": ("invalid items (item_errors)", "type"),
    "skipped_by_reason": ("skipped requests", "reason"),
    "failed_by_reason": ("failed requests", "reason"),
    "item_tables": ("item tables and views", "type"),
}


def crawl_report(conn: ReadConnection) -> dict[str, Any]:
    """Return the summary of the crawl database behind `conn` as JSON-ready data.

    Raises:
        sqlite3.Error: the file is not a crawl database (a table is missing).
    """
    runs = [
        {
            "id": row[0],
            "spider": row[1],
            "status": row[2],
            "reason": row[3],
            "started_at": row[4],
            "finished_at": row[5],
            "duration_s": row[6] or 0.0,
        }
        for row in conn.execute(_RUNS)
    ]
    pages, fetched, stored, avg_ms = conn.execute(_PAGES).fetchone()
    duration = round(sum(run["duration_s"] for run in runs), 3)
    report: dict[str, Any] = {
        "spider": runs[-1]["spider"] if runs else None,
        "runs": runs,
        "status": runs[-1]["status"] if runs else None,
        "duration_s": duration,
        "pages": pages,
        "pages_per_second": round(pages / duration, 1) if duration > 0 else 0.0,
        "bytes_fetched": fetched,
        "bytes_stored": stored,
        "avg_elapsed_ms": avg_ms,
        "items": conn.execute("SELECT count(*) FROM items").fetchone()[0],
    }
    for name, sql in _BREAKDOWNS.items():
        report[name] = {_key(row[0]): row[1] for row in conn.execute(sql)}
    return report


def _key(value: object) -> str:
    return "(none)" if value is None or value == "" else str(value)


def render_report(report: dict[str, Any], title: str) -> Group:
    """Return the report as rich tables: the overview, then one table per breakdown."""
    overview = Table(title=title, show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    last = report["runs"][-1] if report["runs"] else None
    rows: list[tuple[str, str]] = [
        ("spider", str(report["spider"] or "-")),
        ("runs", f"{len(report['runs'])} (last: {last['status']})" if last else "0"),
        ("started", str(report["runs"][0]["started_at"]) if last else "-"),
        ("finished", str(last["finished_at"] or "-") if last else "-"),
        ("duration", f"{report['duration_s']:,.1f} s"),
        ("pages", f"{report['pages']:,}"),
        ("pages/s", f"{report['pages_per_second']:,.1f}"),
        ("bytes fetched", f"{report['bytes_fetched']:,}"),
        ("bytes stored (bodies)", f"{report['bytes_stored']:,}"),
        ("average response", f"{report['avg_elapsed_ms']:,.1f} ms"),
        ("items", f"{report['items']:,}"),
    ]
    for name, value in rows:
        overview.add_row(name, value)
    parts: list[Table] = [overview]
    for name, (heading, column) in _TITLES.items():
        counts: dict[str, object] = report[name]
        if not counts:
            continue
        table = Table(title=heading, title_justify="left")
        table.add_column(column)
        table.add_column("table or view" if name == "item_tables" else "count", justify="right")
        for label, count in counts.items():
            table.add_row(label, f"{count:,}" if isinstance(count, int) else str(count))
        parts.append(table)
    return Group(*parts)
