"""Reading stored pages back: the `pages` row, the request it answered and its gunzipped
body, rebuilt as the `Response` a crawl parsed. Read-only SQL: nothing here writes.

Used by `crawler record --from` (a sqlite3 connection), `crawler parse --from` and
`crawler reparse` (aiosqlite connections); each decides what a missing or damaged body means.
`reparse --processes N` cuts the pages with bodies into chunks of consecutive ids
(`chunk_end`), and its worker processes read them through a `PageReader`
(`open_page_reader`), the one way a worker opens the database: read-only.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import aiosqlite

from crawler.errors import StorageError
from crawler.links import try_canonical_url
from crawler.spider.http import Request, Response
from crawler.store.schema import storage_error

if TYPE_CHECKING:
    import asyncpg

    from crawler.store.pg_read import ReadConnection

__all__ = [
    "DamagedBody",
    "PageReader",
    "StoredPage",
    "chunk_end",
    "gunzip",
    "latest_page",
    "latest_page_async",
    "open_page_reader",
    "pages_with_bodies",
    "pg_pages_with_bodies",
]

_SELECT: Final = """
SELECT p.id, p.request_id, p.crawl_id, p.url, p.final_url, p.status, p.content_type,
       p.encoding, p.body, r.url, r.callback, r.method, r.headers, r.meta, r.depth
FROM pages AS p JOIN requests AS r ON r.id = p.request_id
"""
_LATEST: Final = (
    _SELECT + "WHERE p.url IN (?, ?) OR p.final_url IN (?, ?) ORDER BY p.id DESC LIMIT 1"
)
_WITH_BODIES: Final = _SELECT + "WHERE p.body IS NOT NULL AND p.id > ? ORDER BY p.id LIMIT ?"
_CHUNK_END: Final = (
    "SELECT max(id) FROM (SELECT id FROM pages WHERE body IS NOT NULL AND id > ? "
    "ORDER BY id LIMIT ?)"
)


class DamagedBody(StorageError):
    """A stored body is not a valid gzip stream; the message is the decompressor's."""


def gunzip(blob: bytes) -> bytes:
    """Decompress a stored body.

    Raises:
        DamagedBody: the blob is truncated or not gzip.
    """
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as exc:
        raise DamagedBody(str(exc)) from None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredPage:
    """One `pages` row with the columns of its request; the body still gzip-compressed."""

    id: int
    request_id: int
    crawl_id: int
    url: str
    """The URL that was requested (`pages.url`)."""
    final_url: str
    status: int
    content_type: str
    encoding: str | None
    blob: bytes | None
    """The gzip-compressed body; None when the crawl did not store bodies."""
    request_columns: tuple[Any, ...]
    """`requests.url, callback, method, headers, meta, depth`, parsed only when asked for."""

    @property
    def content_type_header(self) -> str:
        """The `Content-Type` header a crawl saw, rebuilt from the type and charset."""
        if self.encoding:
            return f"{self.content_type}; charset={self.encoding}"
        return self.content_type

    def body(self) -> bytes | None:
        """The body, decompressed; None when the crawl did not store it.

        Raises:
            DamagedBody: the stored blob is truncated or not gzip.
        """
        return None if self.blob is None else gunzip(self.blob)

    def request(self) -> Request:
        """The stored request this page answered."""
        url, callback, method, headers, meta, depth = self.request_columns
        return Request(
            url,
            callback=callback or "parse",
            method=method or "GET",
            headers=json.loads(headers) if headers else None,
            meta=json.loads(meta) if meta else None,
            depth=depth,
        )

    def response(self, body: bytes, request: Request | None = None) -> Response:
        """The Response a crawl parsed: `body` decompressed, `request` by default the stored
        one."""
        return Response(
            url=self.final_url,
            status=self.status,
            headers={"Content-Type": self.content_type_header},
            body=body,
            request=request or self.request(),
        )


def _page(row: Sequence[Any]) -> StoredPage:
    page_id, request_id, crawl_id, url, final_url, status, content_type, encoding, blob = row[:9]
    return StoredPage(
        id=int(page_id),
        request_id=int(request_id),
        crawl_id=int(crawl_id),
        url=str(url),
        final_url=str(final_url),
        status=int(status),
        content_type=str(content_type),
        encoding=encoding,
        blob=blob,
        request_columns=tuple(row[9:]),
    )


def _first(rows: Iterable[Sequence[Any]]) -> StoredPage | None:
    row = next(iter(rows), None)
    return None if row is None else _page(row)


def _url_args(url: str) -> tuple[str, str, str, str]:
    # As given or canonical, requested or reached after redirects: whichever the crawl stored.
    canonical = try_canonical_url(url) or url
    return (url, canonical, url, canonical)


def latest_page(conn: ReadConnection, url: str) -> StoredPage | None:
    """The most recently stored page requested as or redirected to `url`, if any.

    Raises:
        sqlite3.Error: not a crawl database.
    """
    return _first(conn.execute(_LATEST, _url_args(url)).fetchall())


async def latest_page_async(conn: aiosqlite.Connection, url: str) -> StoredPage | None:
    """`latest_page` on an aiosqlite connection."""
    return _first(await conn.execute_fetchall(_LATEST, _url_args(url)))


async def pages_with_bodies(conn: aiosqlite.Connection, after: int, limit: int) -> list[StoredPage]:
    """Up to `limit` pages with a stored body and an id above `after`, in id order."""
    return [_page(row) for row in await conn.execute_fetchall(_WITH_BODIES, (after, limit))]


async def chunk_end(conn: aiosqlite.Connection, after: int, limit: int) -> int | None:
    """The id of the last page `pages_with_bodies(conn, after, limit)` would return (None when
    it would return none), read without the bodies."""
    rows = await conn.execute_fetchall(_CHUNK_END, (after, limit))
    value = next(iter(rows))[0]
    return None if value is None else int(value)


@final
class PageReader:
    """A read-only connection that reads chunks of pages with bodies, for a reparse worker.

    Plain sqlite3, no thread: a worker has nothing else to do while it reads, and on a busy
    machine every hand-over to another thread waits for the scheduler.
    """

    def __init__(self, database: Path) -> None:
        self._database = database
        try:
            self._conn = sqlite3.connect(
                f"{database.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            self._conn.execute("PRAGMA busy_timeout = 10000")
        except sqlite3.Error as exc:
            raise storage_error(database, exc, "read") from None

    async def chunk(self, after: int, limit: int) -> list[StoredPage]:
        """What `pages_with_bodies(conn, after, limit)` returns.

        Raises:
            StorageError: the file cannot be read.
        """
        try:
            rows = self._conn.execute(_WITH_BODIES, (after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise storage_error(self._database, exc, "read") from None
        return [_page(row) for row in rows]

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def open_page_reader(database: Path) -> PageReader:
    """Open `database` read-only for reading chunks of pages.

    Raises:
        StorageError: the file cannot be opened.
    """
    return PageReader(database)


async def pg_pages_with_bodies(
    conn: asyncpg.Connection, after: int, limit: int
) -> list[StoredPage]:
    """`pages_with_bodies` on a PostgreSQL connection."""
    sql = _SELECT + "WHERE p.body IS NOT NULL AND p.id > $1 ORDER BY p.id LIMIT $2"
    rows = await conn.fetch(sql, after, limit)
    return [_page(tuple(row)) for row in rows]
