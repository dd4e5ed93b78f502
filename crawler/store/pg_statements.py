"""The statements of a write batch on PostgreSQL: each of crawler.store.statements' statements,
written for PostgreSQL and run once for all of a batch's rows (`unnest` over one array per
column: one multi-row statement per table, whatever the batch's size).

`run_script` runs a `Script` (as crawler.store.rows builds it for both databases) this way,
inside the caller's transaction. Text that PostgreSQL cannot hold (a NUL character) becomes
U+FFFD, the replacement character, as it does in the SQLite file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

import asyncpg

from crawler.store import statements
from crawler.store.bulk import BulkStatement, Script

__all__ = ["INSERT_REQUEST", "PgStatement", "run_script", "sanitize"]

_ESCAPED_NUL: Final = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def sanitize(value: object, *, json: bool = False) -> object:
    """A value PostgreSQL accepts: NUL characters (and in JSON text, `\\u0000` escapes, which
    `jsonb` refuses) replaced by U+FFFD."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if json and "\\u0000" in value:
            value = _ESCAPED_NUL.sub(lambda m: m.group(1) + "\\ufffd", value)
    return value


@final
@dataclass(frozen=True, slots=True)
class PgStatement:
    """A statement over `unnest($1::t1[], $2::t2[], …) AS u(c1, c2, …)`, one array per field.

    `sql` holds `{rows}` where that row source goes; `types` are the fields' PostgreSQL types,
    `names` the names the fields have in `u`; `unique` the field whose duplicates in one
    batch keep only the last row (an upsert may not change a row twice)."""

    sql: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    unique: int | None = None

    def source(self) -> str:
        arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(self.types))
        return f"unnest({arrays}) AS u({', '.join(self.names)})"

    async def run(self, conn: asyncpg.Connection, rows: Sequence[Sequence[object]]) -> int:
        """Run the statement for `rows`; return how many rows it inserted or changed."""
        if not rows:
            return 0
        if self.unique is not None:
            rows = list({row[self.unique]: row for row in rows}.values())
        width = len(self.types)
        if len(rows[0]) != width:
            raise ValueError(f"rows of {len(rows[0])} fields for a statement of {width}")
        columns = [
            [sanitize(row[i], json=self.types[i] == "jsonb") for row in rows] for i in range(width)
        ]
        status = await conn.execute(self.sql.format(rows=self.source()), *columns)
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0


_REQUEST: Final = (
    "url",
    "fingerprint",
    "host",
    "method",
    "callback",
    "headers",
    "meta",
    "depth",
    "priority",
    "parent_id",
    "crawl_id",
    "discovered_at",
)
_REQUEST_TYPES: Final = (
    "text", "bigint", "text", "text", "text", "jsonb", "jsonb", "bigint", "bigint", "bigint",
    "bigint", "text",
)  # fmt: skip
_REQUEST_COLUMNS: Final = ", ".join(_REQUEST)
INSERT_REQUEST: Final = PgStatement(
    f"INSERT INTO requests ({_REQUEST_COLUMNS}, state) "
    f"SELECT {_REQUEST_COLUMNS}, 'pending' FROM {{rows}} "
    "ON CONFLICT (fingerprint) DO UPDATE SET state = 'pending', reason = NULL, "
    "finished_at = NULL, method = excluded.method, callback = excluded.callback, "
    "headers = excluded.headers, meta = excluded.meta, depth = excluded.depth, "
    "priority = excluded.priority, parent_id = excluded.parent_id "
    "WHERE requests.state = 'skipped' AND requests.reason = 'depth'",
    _REQUEST,
    _REQUEST_TYPES,
    unique=1,
)
_SKIPPED: Final = (
    "url",
    "fingerprint",
    "host",
    "depth",
    "reason",
    "parent_id",
    "crawl_id",
    "discovered_at",
    "finished_at",
)
_SKIPPED_TYPES: Final = (
    "text", "bigint", "text", "bigint", "text", "bigint", "bigint", "text", "text",
)  # fmt: skip
_SKIPPED_INSERT: Final = (
    f"INSERT INTO requests ({', '.join(_SKIPPED)}, state) "
    f"SELECT {', '.join(_SKIPPED)}, 'skipped' FROM {{rows}} "
)
_PAGE: Final = (
    "request_id", "crawl_id", "url", "final_url", "status", "content_type", "encoding",
    "size_bytes", "depth", "elapsed_ms", "fetched_at", "etag", "last_modified", "body_hash",
)  # fmt: skip
_PAGE_TYPES: Final = (
    "bigint", "bigint", "text", "text", "bigint", "text", "text", "bigint", "bigint", "float8",
    "text", "text", "text", "bigint",
)  # fmt: skip
_FETCH: Final = (
    "request_id", "crawl_id", "url", "status", "size_bytes", "body_hash", "changed",
    "conditional", "elapsed_ms", "fetched_at",
)  # fmt: skip
_FETCH_TYPES: Final = (
    "bigint", "bigint", "text", "bigint", "bigint", "bigint", "bigint", "bigint", "float8",
    "text",
)  # fmt: skip
_HOST: Final = (
    "host", "fetched", "errors", "crawl_delay", "throttle_delay", "throttle_concurrency",
    "not_before", "last_status", "updated_at", "cookies",
)  # fmt: skip
_HOST_TYPES: Final = (
    "text", "bigint", "bigint", "float8", "float8", "bigint", "float8", "bigint", "text", "text",
)  # fmt: skip
_ITEM_ERROR: Final = (
    "crawl_id", "request_id", "url", "callback", "item_type", "field", "message", "data",
    "created_at",
)  # fmt: skip
_ERROR: Final = (
    "crawl_id", "request_id", "url", "kind", "message", "attempt", "callback", "created_at",
)  # fmt: skip
_ROBOTS: Final = (
    "url", "host", "fetched_at", "status", "outcome", "crawl_delay", "body", "error", "crawl_id",
)  # fmt: skip


def _insert(table: str, names: tuple[str, ...], types: tuple[str, ...]) -> PgStatement:
    columns = ", ".join(names)
    sql = f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {{rows}}"
    return PgStatement(sql, names, types)


_LINK: Final = PgStatement(
    "INSERT INTO links (page_id, from_url, to_url) "
    "SELECT p.id, u.from_url, u.to_url FROM {rows} JOIN pages AS p ON p.request_id = u.request_id",
    ("request_id", "from_url", "to_url"),
    ("bigint", "text", "text"),
)
_STATEMENTS: Final[dict[int, PgStatement]] = {
    id(statements.INSERT_REQUEST_SKIPPED): PgStatement(
        f"INSERT INTO requests ({_REQUEST_COLUMNS}, state, reason, finished_at) "
        f"SELECT {_REQUEST_COLUMNS}, 'skipped', reason, finished_at FROM {{rows}} "
        "ON CONFLICT DO NOTHING",
        (*_REQUEST, "reason", "finished_at"),
        (*_REQUEST_TYPES, "text", "text"),
    ),
    id(statements.INSERT_SKIPPED): PgStatement(
        _SKIPPED_INSERT + "ON CONFLICT DO NOTHING", _SKIPPED, _SKIPPED_TYPES
    ),
    id(statements.UPSERT_REDIRECT_TARGET): PgStatement(
        _SKIPPED_INSERT + "ON CONFLICT (fingerprint) DO UPDATE SET state = 'skipped', "
        "reason = excluded.reason, finished_at = excluded.finished_at "
        "WHERE requests.state = 'pending' AND requests.lease_owner IS NULL",
        _SKIPPED,
        _SKIPPED_TYPES,
        unique=1,
    ),
    id(statements.INSERT_PAGE): PgStatement(
        f"INSERT INTO pages ({', '.join(_PAGE)}) SELECT {', '.join(_PAGE)} FROM {{rows}} "
        "ON CONFLICT (request_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _PAGE[1:])
        + ", body = NULL",
        _PAGE,
        _PAGE_TYPES,
        unique=0,
    ),
    id(statements.TOUCH_PAGE): PgStatement(
        "UPDATE pages SET crawl_id = u.crawl_id, fetched_at = u.fetched_at, "
        "elapsed_ms = u.elapsed_ms, etag = coalesce(u.etag, pages.etag), "
        "last_modified = coalesce(u.last_modified, pages.last_modified) "
        "FROM {rows} WHERE pages.request_id = u.request_id",
        ("request_id", "crawl_id", "fetched_at", "elapsed_ms", "etag", "last_modified"),
        ("bigint", "bigint", "text", "float8", "text", "text"),
        unique=0,
    ),
    id(statements.INSERT_FETCH): _insert("fetches", _FETCH, _FETCH_TYPES),
    id(statements.INSERT_FETCH_OF_PAGE): PgStatement(
        f"INSERT INTO fetches ({', '.join(_FETCH)}) SELECT p.request_id, p.crawl_id, "
        "p.final_url, p.status, p.size_bytes, p.body_hash, 1, u.conditional, p.elapsed_ms, "
        "p.fetched_at FROM {rows} JOIN pages AS p ON p.request_id = u.request_id",
        ("request_id", "conditional"),
        ("bigint", "bigint"),
    ),
    id(statements.INSERT_FETCH_EXCHANGE): _insert(
        "fetches",
        (*_FETCH, "http_version", "reason", "headers", "request_headers"),
        (*_FETCH_TYPES, "text", "text", "jsonb", "jsonb"),
    ),
    id(statements.SET_LASTMOD): PgStatement(
        "UPDATE requests SET lastmod = u.lastmod, "
        "attempts = CASE WHEN state IN ('done', 'failed') AND u.lastmod > finished_at "
        "THEN 0 ELSE attempts END, "
        "state = CASE WHEN state IN ('done', 'failed') AND u.lastmod > finished_at "
        "THEN 'pending' ELSE state END "
        "FROM {rows} WHERE requests.fingerprint = u.fingerprint",
        ("fingerprint", "lastmod"),
        ("bigint", "text"),
        unique=0,
    ),
    id(statements.INSERT_ITEM): _insert(
        "items",
        ("crawl_id", "request_id", "page_url", "type", "data", "created_at"),
        ("bigint", "bigint", "text", "text", "jsonb", "text"),
    ),
    id(statements.INSERT_ERROR): _insert(
        "errors", _ERROR, ("bigint", "bigint", "text", "text", "text", "bigint", "text", "text")
    ),
    id(statements.INSERT_ITEM_KEY): _insert(
        "item_keys",
        ("type", "key_hash", "key", "crawl_id", "created_at", "request_id"),
        ("text", "bigint", "jsonb", "bigint", "text", "bigint"),
    ),
    id(statements.INSERT_ITEM_ERROR): _insert(
        "item_errors",
        _ITEM_ERROR,
        ("bigint", "bigint", "text", "text", "text", "text", "text", "jsonb", "text"),
    ),
    id(statements.FINISH_REQUEST): PgStatement(
        "UPDATE requests SET state = u.state, reason = u.reason, attempts = u.attempts, "
        "not_before = u.not_before, finished_at = u.finished_at, lease_owner = NULL, "
        "lease_expires = NULL FROM {rows} WHERE requests.id = u.id",
        ("state", "reason", "attempts", "not_before", "finished_at", "id"),
        ("text", "text", "bigint", "float8", "text", "bigint"),
        unique=5,
    ),
    id(statements.UPSERT_HOST): PgStatement(
        "INSERT INTO hosts AS h (host, admitted, fetched, errors, crawl_delay, throttle_delay, "
        "throttle_concurrency, not_before, last_status, updated_at, cookies) "
        "SELECT host, 0, fetched, errors, crawl_delay, throttle_delay, throttle_concurrency, "
        "not_before, last_status, updated_at, cookies FROM {rows} ORDER BY host "
        "ON CONFLICT (host) DO UPDATE SET fetched = h.fetched + excluded.fetched, "
        "errors = h.errors + excluded.errors, crawl_delay = excluded.crawl_delay, "
        "throttle_delay = excluded.throttle_delay, "
        "throttle_concurrency = excluded.throttle_concurrency, "
        "not_before = greatest(h.not_before, excluded.not_before), "
        "last_status = coalesce(excluded.last_status, h.last_status), "
        "updated_at = excluded.updated_at, cookies = coalesce(excluded.cookies, h.cookies)",
        _HOST,
        _HOST_TYPES,
        unique=0,
    ),
    id(statements.UPSERT_ROBOTS): PgStatement(
        f"INSERT INTO robots ({', '.join(_ROBOTS)}) SELECT {', '.join(_ROBOTS)} FROM {{rows}} "
        "ON CONFLICT (url) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _ROBOTS[1:]),
        _ROBOTS,
        ("text", "text", "text", "bigint", "text", "float8", "text", "text", "bigint"),
        unique=0,
    ),
}


def pg_statement(statement: BulkStatement) -> PgStatement:
    """The PostgreSQL form of one of crawler.store.statements' statements."""
    return _STATEMENTS[id(statement)]


async def run_script(conn: asyncpg.Connection, script: Script) -> None:
    """Run a batch's statements in order, inside the caller's transaction."""
    for step in script.steps():
        if isinstance(step, str):
            raise ValueError(f"no PostgreSQL form for {step!r}")
        statement, rows = step
        if statement is statements.INSERT_LINK:
            await _LINK.run(conn, _link_rows(rows))
        else:
            await pg_statement(statement).run(conn, rows)


def _link_rows(rows: Sequence[Sequence[object]]) -> list[tuple[object, object, str]]:
    """One row per link from `INSERT_LINK`'s rows (request id, page URL, list of links)."""
    flat: list[tuple[object, object, str]] = []
    for request_id, from_url, links in rows:
        assert isinstance(links, list)
        flat.extend((request_id, from_url, str(to_url)) for to_url in links)
    return flat
