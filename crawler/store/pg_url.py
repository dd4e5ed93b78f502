"""What the code common to both databases knows of PostgreSQL without loading asyncpg: whether
a target names a PostgreSQL database, its URL as messages show it, and asyncpg's errors to
catch beside SQLite's.

asyncpg and the PostgreSQL modules (`pg_*`) are imported where a PostgreSQL URL is opened, so
that a crawl of a SQLite file, and every command that has no PostgreSQL URL, starts without
them (tests/test_startup.py). Elsewhere they are imported under `TYPE_CHECKING`, for types.
"""

from __future__ import annotations

import re
import sys
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["is_postgres_url", "redact", "with_pg_driver_errors", "with_pg_errors"]

_URL: Final = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


def is_postgres_url(target: object) -> bool:
    """Whether a database target (a path or a string) names a PostgreSQL database."""
    return isinstance(target, str) and bool(_URL.match(target))


def redact(url: str) -> str:
    """The URL without its password, for messages and the `crawls` table."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, parts.query, ""))


def with_pg_errors(*errors: type[Exception]) -> tuple[type[Exception], ...]:
    """`errors` and `asyncpg.PostgresError` (what the server reported) once asyncpg is
    loaded; before, nothing can raise it. `except with_pg_errors(sqlite3.Error)` catches
    either database's errors without loading asyncpg for a SQLite file."""
    asyncpg = sys.modules.get("asyncpg")
    return errors if asyncpg is None else (*errors, asyncpg.PostgresError)


def with_pg_driver_errors(*errors: type[Exception]) -> tuple[type[Exception], ...]:
    """`with_pg_errors(*errors)` and `asyncpg.InterfaceError` (the client's own: a
    connection closed or in use)."""
    found = with_pg_errors(*errors)
    asyncpg = sys.modules.get("asyncpg")
    return found if asyncpg is None else (*found, asyncpg.InterfaceError)
