"""`crawler reparse` on a PostgreSQL crawl database: the same replacement as on an SQLite
file (crawler.engine.reparse), in one transaction, parsed in this process (the worker
processes of `--processes` read the SQLite file themselves).

Everything the callbacks produced for the pages with a stored body — items, typed-table
rows and views, item errors, errors of kind `spider` and `item`, and the item keys — is
deleted and written again from what the callbacks yield now, chunk by chunk; the items it
replaces are kept in `item_history` (reason `reparse`) by the statement SQLite's reparse runs
(crawler.store.history). A callback that raises `StopCrawl`, a Ctrl-C or any failure rolls it
all back, the history with it; a second Ctrl-C does not cut that rollback short.
"""

from __future__ import annotations

import time
from typing import Final, final

import asyncpg

from crawler.engine.crawl import run_to_the_end
from crawler.engine.reparse import (
    CALLBACK_ERROR_KINDS,
    REPARSE_BATCH,
    ReparseSummary,
    refuse_other_spiders,
    refuse_unready,
)
from crawler.engine.reparse_chunks import ChunkParser
from crawler.engine.reparse_rows import ReparseRows, RowWriter, Tally
from crawler.records import utc_now
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.store.claims import LEASE_SECONDS
from crawler.store.history import ARCHIVE_REPARSED
from crawler.store.pages import pg_pages_with_bodies
from crawler.store.pg_items import PgItemTables, declare_pg_item_tables
from crawler.store.pg_schema import open_pg, pg_error
from crawler.store.pg_statements import PgStatement
from crawler.store.pg_url import redact

__all__ = ["reparse_postgres"]


class _Stopped(Exception):
    """A callback stopped the reparse: what it did so far is rolled back."""


async def reparse_postgres(spider: Spider, url: str, settings: Settings) -> ReparseSummary:
    """Re-run `spider`'s callbacks over the bodies stored in the database at `url`.

    Raises:
        StorageError: not a crawl database, another spider's crawl, no stored bodies, a
            crawl running on it, or the server failing.
    """
    conn = await open_pg(url)
    summary = ReparseSummary(processes=1)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await _check(conn, spider, url, summary)
            await spider.opened()
            try:
                await _replace(conn, spider, settings, summary)
            finally:
                await spider.closed("finished")
        except BaseException:
            # A second Ctrl-C (cancelling `closed()`, say) does not cut these short.
            await run_to_the_end(transaction.rollback())
            raise
        await transaction.commit()
    except _Stopped:
        summary.stopped = f"{summary.stopped} (nothing was changed)"
    except asyncpg.PostgresError as exc:
        raise pg_error(url, exc, "reparse") from None
    finally:
        await run_to_the_end(conn.close())
    return summary


async def _replace(
    conn: asyncpg.Connection, spider: Spider, settings: Settings, summary: ReparseSummary
) -> None:
    await _clear(conn)
    parser = ChunkParser(spider, settings)
    writer = _PgRowWriter(conn, summary.tally)
    after = 0
    while pages := await pg_pages_with_bodies(conn, after, REPARSE_BATCH):
        after = pages[-1].id
        chunk = await parser.parse(pages)
        summary.add(chunk)
        await writer.write(chunk.results, chunk.tables)
        if summary.stopping():
            raise _Stopped
    await declare_pg_item_tables(conn, spider)
    await conn.execute(_UPDATE_RUN_STATS)


async def _check(
    conn: asyncpg.Connection, spider: Spider, url: str, summary: ReparseSummary
) -> None:
    where = redact(url)
    spiders = {str(row[0]) for row in await conn.fetch("SELECT DISTINCT spider FROM crawls")}
    refuse_other_spiders(where, spiders, spider)
    running = await conn.fetchval(
        "SELECT count(*) FROM crawls WHERE status = 'running' AND heartbeat_at > $1",
        time.time() - LEASE_SECONDS,
    )
    row = await conn.fetchrow(
        "SELECT count(body) FILTER (WHERE status < 300), "
        "count(*) FILTER (WHERE status < 300 AND body IS NULL) FROM pages"
    )
    with_body, without = (int(v) for v in tuple(row or (0, 0)))
    summary.without_body = without
    refuse_unready(where, running=bool(running), with_body=with_body)


async def _clear(conn: asyncpg.Connection) -> None:
    """Delete what the callbacks produced for every page with a body (its items kept in
    `item_history`, reason `reparse`, as on SQLite); drop emptied tables."""
    await conn.execute(ARCHIVE_REPARSED.format(now="$1"), utc_now())
    await conn.execute(f"DELETE FROM items WHERE request_id IN ({_REPARSED})")
    await conn.execute(
        f"DELETE FROM errors WHERE kind = ANY($1::text[]) AND request_id IN ({_REPARSED})",
        list(CALLBACK_ERROR_KINDS),
    )
    await conn.execute(f"DELETE FROM item_errors WHERE request_id IN ({_REPARSED})")
    await conn.execute("DELETE FROM item_keys")
    await PgItemTables().drop_emptied(conn, _REPARSED)


@final
class _PgRowWriter(RowWriter[asyncpg.Connection]):
    """RowWriter's rows (de-duplicated items, keys, errors), written with PostgreSQL's
    multi-row statements."""

    def __init__(self, conn: asyncpg.Connection, tally: Tally) -> None:
        super().__init__(conn, PgItemTables(), tally)

    async def _insert(self, rows: ReparseRows) -> None:
        for statement, values in zip(_INSERTS, (rows.items, rows.keys, rows.errors), strict=True):
            await statement.run(self._conn, values)
        await _ITEM_ERRORS.run(self._conn, rows.item_errors)


_REPARSED: Final = "SELECT request_id FROM pages WHERE body IS NOT NULL"
_INSERTS: Final = (
    PgStatement(
        "INSERT INTO items (crawl_id, request_id, page_url, type, data, created_at) "
        "SELECT * FROM {rows}",
        ("crawl_id", "request_id", "page_url", "type", "data", "created_at"),
        ("bigint", "bigint", "text", "text", "jsonb", "text"),
    ),
    PgStatement(
        "INSERT INTO item_keys (type, key_hash, key, crawl_id, created_at, request_id) "
        "SELECT * FROM {rows} ON CONFLICT DO NOTHING",
        ("type", "key_hash", "key", "crawl_id", "created_at", "request_id"),
        ("text", "bigint", "jsonb", "bigint", "text", "bigint"),
    ),
    PgStatement(
        "INSERT INTO errors (crawl_id, request_id, url, kind, message, attempt, callback, "
        "created_at) SELECT * FROM {rows}",
        ("crawl_id", "request_id", "url", "kind", "message", "attempt", "callback", "created_at"),
        ("bigint", "bigint", "text", "text", "text", "bigint", "text", "text"),
    ),
)
_ITEM_ERRORS: Final = PgStatement(
    "INSERT INTO item_errors (crawl_id, request_id, url, callback, item_type, field, message, "
    "data, created_at) SELECT * FROM {rows}",
    ("crawl_id", "request_id", "url", "callback", "item_type", "field", "message", "data",
     "created_at"),
    ("bigint", "bigint", "text", "text", "text", "text", "text", "jsonb", "text"),
)  # fmt: skip
_UPDATE_RUN_STATS: Final = """
UPDATE crawls SET stats = coalesce(stats, '{}'::jsonb) || jsonb_build_object(
    'items', (SELECT count(*) FROM items WHERE crawl_id = crawls.id),
    'items_by_type', coalesce((SELECT jsonb_object_agg(type, n) FROM (
        SELECT type, count(*) AS n FROM items WHERE crawl_id = crawls.id GROUP BY type) AS t),
        '{}'::jsonb),
    'errors', coalesce((SELECT jsonb_object_agg(kind, n) FROM (
        SELECT kind, count(*) AS n FROM errors WHERE crawl_id = crawls.id GROUP BY kind) AS k),
        '{}'::jsonb))
WHERE jsonb_typeof(coalesce(stats, '{}'::jsonb)) = 'object'
"""
"""Each run's stored counters, made to agree with the tables again."""
