"""Read-only access to SQLite files for the read-side commands: opening a file so that no
statement can write any file at all (`open_read_only`), refusing files that are not crawl
databases or are of a newer schema (`open_crawl_database`), the SQLite authorizer that
allows reads only and says why it refused the rest (`ReadOnlyGuard`), and the one line for a
failed read or query (`read_error`, `query_error`). A PostgreSQL URL is read through
crawler.store.pg_read, imported when one is opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from crawler.errors import CrawlerError, QueryError, StorageError, StorageFailure
from crawler.store.pg_url import with_pg_errors
from crawler.store.schema import check_crawl_database, storage_error

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection

T = TypeVar("T")

__all__ = [
    "ReadOnlyGuard",
    "open_crawl_database",
    "open_read_only",
    "query_error",
    "read_crawl_database",
    "read_error",
]


def open_read_only(
    path: Path | str,
    *,
    write: bool = False,
    guard: ReadOnlyGuard | None = None,
    interruptible: bool = False,
) -> ReadConnection:
    """Open an existing SQLite file, read-only unless `write`. Read-only, the connection
    cannot write any file at all, this one or another: `?mode=ro` and a ReadOnlyGuard
    (`guard`, if given, to learn why a statement was refused).

    `interruptible`: a signal's handler may run while a statement runs, and its exception
    stops the statement, which fails with "interrupted" (for commands that stop on signals
    with crawler.cli.common.stopped_by_signals, which takes that failure for the signal).

    Raises:
        StorageError: the file does not exist or is not an SQLite database (StorageFailure:
            it cannot be read).
    """
    if isinstance(path, str):  # PostgreSQL: a READ ONLY transaction, unless `write`
        from crawler.store.pg_read import PgReader  # loads asyncpg (crawler.store.pg_url)

        return PgReader(path, write=write)
    if not path.is_file():
        raise StorageError(f"no such database file: {path}")
    uri = path.resolve().as_uri() + ("?mode=rw" if write else "?mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise storage_error(path, exc, "read") from None
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if interruptible:
            # SQLite runs a statement without returning to Python, so that a signal's
            # handler would wait for its end: this lets it run.
            conn.set_progress_handler(_let_signals_in, _SIGNAL_CHECK_STEPS)
        if not write:
            (guard or ReadOnlyGuard()).install(conn)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise storage_error(path, exc, "read") from None
    return conn


_SIGNAL_CHECK_STEPS: Final = 100_000
"""SQLite virtual machine steps between two chances for a signal's handler to run."""


def _let_signals_in() -> bool:
    """SQLite's progress handler: continue. A signal's handler runs on the way in, and its
    KeyboardInterrupt makes SQLite stop the statement ("interrupted")."""
    return False


def read_crawl_database(path: Path | str, read: Callable[[ReadConnection], T]) -> T:
    """Open a crawl database read-only (`open_crawl_database`), return `read(conn)` and close
    it; a database error while reading is a `StorageError` naming the file."""
    conn = open_crawl_database(path)
    try:
        return read(conn)
    except sqlite3.Error as exc:
        raise storage_error(Path(path), exc, "read") from None
    except with_pg_errors() as exc:
        from crawler.store.pg_schema import pg_error

        raise pg_error(str(path), exc, "read") from None
    finally:
        conn.close()


def open_crawl_database(path: Path | str, *, interruptible: bool = False) -> ReadConnection:
    """Open a crawl database read-only, refusing other SQLite files and newer schemas (and
    PostgreSQL databases that hold no crawl or one of a newer schema); `interruptible` as
    for `open_read_only`."""
    if isinstance(path, str):
        from crawler.store.pg_read import open_pg_crawl  # loads asyncpg (crawler.store.pg_url)

        return open_pg_crawl(path)
    conn = open_read_only(path, interruptible=interruptible)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        check_crawl_database(path, application_id=app_id, version=version)
    except sqlite3.Error as exc:
        conn.close()
        raise storage_error(path, exc, "read") from None
    except StorageError:
        conn.close()
        raise
    return conn


_READ_ACTIONS: Final = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_RECURSIVE,
        sqlite3.SQLITE_TRANSACTION,
        sqlite3.SQLITE_SAVEPOINT,
    }
)
_PRAGMAS_READING_AN_ARGUMENT: Final = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
"""Pragmas whose argument names what to read (`PRAGMA table_info(pages)`): for every other
pragma an argument is a new value."""
_PRAGMAS_WRITING: Final = frozenset({"incremental_vacuum", "optimize", "wal_checkpoint"})
"""Pragmas that write to the database although they take no value."""
_SCHEMA_TABLES: Final = frozenset({"sqlite_master", "sqlite_schema"})
_TEMP_SCHEMA_TABLES: Final = frozenset({"sqlite_temp_master", "sqlite_temp_schema"})
_WRITES: Final = {
    sqlite3.SQLITE_INSERT: "INSERT INTO",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE FROM",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE",
    sqlite3.SQLITE_ANALYZE: "ANALYZE",
    sqlite3.SQLITE_REINDEX: "REINDEX",
    sqlite3.SQLITE_CREATE_INDEX: "CREATE INDEX",
    sqlite3.SQLITE_CREATE_TABLE: "CREATE TABLE",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "CREATE TEMP INDEX",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "CREATE TEMP TABLE",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "CREATE TEMP TRIGGER",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "CREATE TEMP VIEW",
    sqlite3.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER",
    sqlite3.SQLITE_CREATE_VIEW: "CREATE VIEW",
    sqlite3.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE",
    sqlite3.SQLITE_DROP_INDEX: "DROP INDEX",
    sqlite3.SQLITE_DROP_TABLE: "DROP TABLE",
    sqlite3.SQLITE_DROP_TEMP_INDEX: "DROP INDEX",
    sqlite3.SQLITE_DROP_TEMP_TABLE: "DROP TABLE",
    sqlite3.SQLITE_DROP_TEMP_TRIGGER: "DROP TRIGGER",
    sqlite3.SQLITE_DROP_TEMP_VIEW: "DROP VIEW",
    sqlite3.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    sqlite3.SQLITE_DROP_VIEW: "DROP VIEW",
    sqlite3.SQLITE_DROP_VTABLE: "DROP VIRTUAL TABLE",
}


class ReadOnlyGuard:
    """An SQLite authorizer that lets a connection read and nothing else.

    `?mode=ro` keeps the database file itself unchanged, but not everything else a
    statement can do: ATTACH creates or writes another file, VACUUM INTO writes a copy,
    temporary tables and pragmas change the connection, load_extension() loads code. The
    guard allows only what reads (allow-list: what SQLite adds later is refused) and
    remembers why it refused the statement it refused (`refused`).
    """

    def __init__(self) -> None:
        self.refused: str | None = None

    def install(self, conn: sqlite3.Connection) -> None:
        conn.set_authorizer(self.authorize)
        enable = getattr(conn, "enable_load_extension", None)  # absent from some builds
        if enable is not None:
            enable(False)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # no ATTACH even if one slipped by

    def authorize(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        database: str | None,
        source: str | None,
    ) -> int:
        refusal = _refusal(action, arg1, arg2)
        if refusal is None:
            return sqlite3.SQLITE_OK
        if self.refused is None:  # SQLite asks nothing more of a statement once refused
            self.refused = refusal
        return sqlite3.SQLITE_DENY


def _refusal(action: int, arg1: str | None, arg2: str | None) -> str | None:
    """Why a read-only connection may not do `action` (the arguments of an authorizer
    callback), or None when it only reads."""
    if action in _READ_ACTIONS:
        return None
    if action == sqlite3.SQLITE_FUNCTION:
        if arg2 == "load_extension":
            return "load_extension() loads code into the process"
        return None
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if arg2 is None and name not in _PRAGMAS_WRITING:
            return None
        if arg2 is not None and name in _PRAGMAS_READING_AN_ARGUMENT:
            return None
        value = "" if arg2 is None else f" = {arg2}"
        return f"PRAGMA {name}{value} changes the database or the connection"
    if action == sqlite3.SQLITE_ATTACH:
        if not arg1:
            return "VACUUM rewrites the database file"
        return f"ATTACH or VACUUM INTO would create or write {arg1}"
    if action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES:
        # SQLite asks this of itself the first time a statement uses a table-valued
        # function (json_each, pragma_table_info); a user's UPDATE of sqlite_master is
        # refused by SQLite itself, and `?mode=ro` keeps the file unchanged anyway.
        return None
    if action == sqlite3.SQLITE_DETACH:
        return "DETACH changes the connection"
    if action in _WRITES:
        if arg1 in _SCHEMA_TABLES or arg1 in _TEMP_SCHEMA_TABLES:
            # CREATE, DROP and ANALYZE ask to write the schema table first: refused there
            what = "CREATE, DROP or ANALYZE" if arg1 in _SCHEMA_TABLES else "CREATE TEMP or DROP"
        else:
            target = arg2 if action == sqlite3.SQLITE_ALTER_TABLE else arg1
            shown = target and action not in (sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE)
            what = f"{_WRITES[action]} {target}" if shown else _WRITES[action]
        return f"{what}: attempt to write a readonly database"
    return f"SQLite action {action} is not a read"


def read_error(database: Path | str, exc: Exception, doing: str) -> StorageError | QueryError:
    """The one line for a read of `database` that failed: a StorageFailure when the storage
    under a SQLite file failed, else a QueryError saying what was being done."""
    if isinstance(exc, sqlite3.Error) and isinstance(database, Path):
        error = storage_error(database, exc, "read")
        if isinstance(error, StorageFailure):
            return error
    return QueryError(f"{doing}: {exc}")


def query_error(exc: Exception, database: Path | str, guard: ReadOnlyGuard | None) -> CrawlerError:
    """What went wrong with a query: a statement refused without --write, the storage
    failing (a read-only file or a full disk under --write), or the SQL."""
    message = str(exc)
    read_only = "the database is open read-only ({}); add --write to allow it"
    if isinstance(database, str):
        import asyncpg  # loaded: the statement ran on PostgreSQL

        refused = isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError)
        return QueryError(read_only.format(message) if refused else f"SQL error: {message}")
    if guard is not None and (guard.refused is not None or "readonly" in message):
        reason = guard.refused or message  # SQLite only says "not authorized"
        return QueryError(read_only.format(reason))
    if isinstance(exc, sqlite3.Error):
        error = storage_error(Path(database), exc, "read" if guard is not None else "write")
        if isinstance(error, StorageFailure):
            return error
    return QueryError(f"SQL error: {message}")
