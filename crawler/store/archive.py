"""Reading the stored pages back for a web archive (`crawler export -f warc`): each page whose
body was stored, with the HTTP exchange that brought that body — the request's latest changed
`fetches` row (status line, headers as received and as sent, time) — and the request's
method. Read-only SQL; crawler.results.warc writes the records.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection


__all__ = ["ARCHIVE_COLUMNS", "archived_pages", "has_stored_bodies"]

ARCHIVE_COLUMNS: Final = (
    "page_id",
    "url",
    "status",
    "content_type",
    "encoding",
    "body",
    "fetched_at",
    "method",
    "http_version",
    "reason",
    "headers",
    "request_headers",
)
"""The columns of an `archived_pages` row (`headers`, `request_headers`: JSON arrays of
[name, value] pairs, NULL for a page fetched without `store_body`'s capture)."""
_ARCHIVED: Final = """
SELECT p.id, coalesce(f.url, p.final_url), coalesce(f.status, p.status), p.content_type,
       p.encoding, p.body, coalesce(f.fetched_at, p.fetched_at), r.method, f.http_version,
       f.reason, f.headers, f.request_headers
FROM pages AS p
JOIN requests AS r ON r.id = p.request_id
LEFT JOIN fetches AS f ON f.id = (
    SELECT max(l.id) FROM fetches AS l WHERE l.request_id = p.request_id AND l.changed = 1
)
WHERE p.body IS NOT NULL
ORDER BY p.id
"""
_ARCHIVED_WITHOUT_FETCHES: Final = """
SELECT p.id, p.final_url, p.status, p.content_type, p.encoding, p.body, p.fetched_at,
       r.method, NULL, NULL, NULL, NULL
FROM pages AS p JOIN requests AS r ON r.id = p.request_id
WHERE p.body IS NOT NULL
ORDER BY p.id
"""
"""The same from a file of a schema before `fetches` (export opens it read-only, as it is)."""


def archived_pages(conn: ReadConnection) -> Iterator[tuple[Any, ...]]:
    """Every page with a stored body, in id order, as `ARCHIVE_COLUMNS` rows (streamed).

    Raises:
        sqlite3.Error: not a crawl database.
    """
    try:
        conn.execute("SELECT 1 FROM fetches LIMIT 1").fetchall()
    except sqlite3.OperationalError:  # no such table: an older file
        yield from conn.execute(_ARCHIVED_WITHOUT_FETCHES)
        return
    yield from conn.execute(_ARCHIVED)


def has_stored_bodies(conn: ReadConnection) -> bool:
    """Whether any page's body was stored (`store_body`)."""
    return bool(conn.execute("SELECT 1 FROM pages WHERE body IS NOT NULL LIMIT 1").fetchall())
