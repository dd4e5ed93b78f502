"""Where a test's crawl is stored — a SQLite file or a PostgreSQL URL — and reading it back.

The behaviour tests that matter for both backends take the `database` fixture
(tests/conftest.py), parametrized over both, pass its target to `crawl(db=...)` or `-o`, and
read the tables with `rows`/`scalar`, which take either: SQL written once with `?`
placeholders and operators both engines understand, as the README's queries are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg

__all__ = ["Target", "assert_fingerprint_set", "assert_intact", "is_postgres", "rows", "scalar"]

Target = Path | str
"""A SQLite file (a Path) or a `postgresql://` URL (a str)."""

_PLACEHOLDER: Final = re.compile(r"\?")


def is_postgres(target: Target) -> bool:
    """Whether `target` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1`, `$2`, ... (no test query has a literal `?`)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql)


def _plain(value: Any) -> Any:
    """A PostgreSQL value as SQLite's driver would return it: sum() and avg() of integers
    come back as numeric, which SQLite gives as int (or float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


async def _fetch(url: str, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        records = await conn.fetch(_numbered(sql), *params)
    finally:
        await conn.close()
    return [tuple(_plain(value) for value in record.values()) for record in records]


def rows(target: Target, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a query against a crawl database and return all rows as tuples."""
    if is_postgres(target):
        assert isinstance(target, str)
        # Called from async tests, whose loop is running: the query gets a loop of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, _fetch(target, sql, params)).result()
    with sqlite3.connect(target) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(target: Target, sql: str, params: tuple[object, ...] = ()) -> Any:
    """Run a query that returns one value."""
    result = rows(target, sql, params)
    return result[0][0] if result else None


def assert_intact(target: Target) -> None:
    """A SQLite file passes `integrity_check` and holds its fingerprint set whole
    (`assert_fingerprint_set`); a PostgreSQL database answers (the server keeps its own
    pages intact, and a crash of a client cannot damage them), and the pending requests
    its triggers count (`frontier_pending`) are those in `requests`."""
    if is_postgres(target):
        assert scalar(target, "SELECT 1") == 1
        if scalar(target, "SELECT to_regclass('frontier_pending') IS NOT NULL"):
            counted = "SELECT count(*) FROM requests WHERE state = 'pending'"
            kept = "SELECT coalesce(sum(pending), 0) FROM frontier_pending"
            assert scalar(target, kept) == scalar(target, counted)
    else:
        assert scalar(target, "PRAGMA integrity_check") == "ok"
        has_set = "SELECT count(*) FROM sqlite_master WHERE name = 'fingerprint_levels'"
        if scalar(target, has_set):  # not in a file killed before its schema was made
            assert_fingerprint_set(target)


_LEVELS: Final = ("fingerprints_new", "fingerprints_recent", "fingerprints")
_FINGERPRINT_SET: Final = (
    "SELECT * FROM ("
    + " UNION ALL ".join(f"SELECT fingerprint, request_id FROM {level}" for level in _LEVELS)
    + ")"
)
_COUNTED: Final = "SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host"
_KEPT: Final = "SELECT host, admitted FROM hosts WHERE admitted != 0"


def assert_fingerprint_set(db: Target) -> None:
    """In a SQLite file (crawler.store.fingerprints): one request per fingerprint, each in
    exactly one level of the set with its request's id, nothing else in the set, the sizes
    of the large levels as `fingerprint_levels` keeps them; and the counters of admitted
    requests that triggers keep (`frontier_counts`, `hosts.admitted`) equal to the counts."""
    assert rows(db, "SELECT fingerprint FROM requests GROUP BY 1 HAVING count(*) > 1") == []
    assert (
        rows(db, f"SELECT fingerprint FROM ({_FINGERPRINT_SET}) GROUP BY 1 HAVING count(*) > 1")
        == []
    )
    by_request = "SELECT fingerprint, id FROM requests"
    assert rows(db, f"{by_request} EXCEPT {_FINGERPRINT_SET}") == []
    assert rows(db, f"{_FINGERPRINT_SET} EXCEPT {by_request}") == []
    assert rows(db, "SELECT merged, recent FROM fingerprint_levels") == [
        (
            scalar(db, "SELECT count(*) FROM fingerprints"),
            scalar(db, "SELECT count(*) FROM fingerprints_recent"),
        )
    ]
    counted = "SELECT count(*) FROM requests WHERE state != 'skipped'"
    assert scalar(db, "SELECT admitted FROM frontier_counts") == scalar(db, counted)
    assert rows(db, f"{_COUNTED} EXCEPT {_KEPT}") == []
    assert rows(db, f"{_KEPT} EXCEPT {_COUNTED}") == []
