"""The crawl database's schema, its version, and opening a file as a crawl database.

Tables (one SQLite file per crawl target, WAL mode):

- `crawls`   one row per run: spider, start/end time, status, settings and final stats (JSON)
- `requests` every URL the crawl admitted or refused, with its state
             (`pending`, `done`, `failed`, `skipped`) and reason; this is also the frontier;
             one row per fingerprint (the hash of the canonical request)
- `fingerprints_new`, `fingerprints_recent`, `fingerprints`  the set of those fingerprints
             (fingerprint → request id) in three levels, kept by triggers on `requests`,
             and `fingerprint_levels` the two large levels' sizes (crawler.store.fingerprints)
- `pages`    one row per HTTP response received (status, type, size, timing, optional body)
- `links`    every `<a href>` of every parsed page (from_url → to_url)
- `items`    every item a callback yielded: type name and JSON data (`json_extract` works)
- `errors`   every failed attempt, spider exception and rejected item
- `robots`   every robots.txt fetched: status, outcome (rules, allow_all, disallow_all), text
- `item_errors` every item refused by validation: URL, callback, type, field, message, data
- `item_keys`   de-duplication keys of stored items (`Spider.dedupe_items_by`), one per type
- `frontier_counts`, `hosts`  requests admitted (not skipped) in the file and per host, kept
                by triggers: what `max_pages` and `max_pages_per_host` count
- `hosts`    also what each host taught the crawl, written with each batch of its results
             and read back when a host comes back into memory (crawler.fetch.politeness):
             `fetched` pages, `errors` (failed attempts: timeout, connection, protocol, error
             status), robots.txt `crawl_delay`, the throttle's `throttle_delay` and
             `throttle_concurrency`, `not_before` (unix time before which no request of the
             host starts: a 429/503 cool-down or the delay), `last_status`, `updated_at`,
             `cookies` (JSON: the cookies the host is sent, crawler.fetch.cookies)
- `item_tables` the typed item tables (`book`, one column per dataclass field) and the views
                of dict item types (`quote_view`), made by crawler.store.item_tables
- `fetches`  every HTTP response received, first fetches and re-fetches: status, body hash,
             size, time, whether it changed the page (`pages` holds the current page)
- `item_history` the items a re-parsed page replaced; `item_versions` (a view) every version
             of every item, with `valid_from` / `valid_to` (crawler.store.history)
- `stats_ts`   one row every `stats_interval` seconds of a running crawl: its counts (pages,
               items, errors, failed, skipped, bytes), in flight, queued, the rates since the
               previous row, errors by kind, skips by reason, statuses (JSON); written by
               crawler.store.samples inside the writer's batches, read by `crawler dashboard`
- `host_stats` per run and host, the latest snapshot of a host the run was busy with: in
               flight, delay, concurrency, cool-down left, pages, errors, failed, 429/503
               answers, mean response time, last status

The schema version is `PRAGMA user_version`, the number of scripts in
crawler.store.migrations that have run; `PRAGMA application_id` marks crawl databases.

This is also the boundary where SQLite's and the OS's errors about the file become ours
(`storage_error`): a StorageFailure when the storage fails under a usable file (disk full,
read-only, I/O error, locked), a StorageError when the file itself is wrong (not a database,
not a crawl database, newer than this crawler, damaged).
"""

from __future__ import annotations

import errno
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import Final

import aiosqlite

from crawler.errors import StorageError, StorageFailure
from crawler.store.migrations import MIGRATIONS

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "check_crawl_database",
    "connect",
    "free_reserve",
    "hold_reserve",
    "open_database",
    "rollback",
    "storage_error",
]

APPLICATION_ID: Final = 0x43524C31  # "CRL1"

SCHEMA_VERSION: Final = len(MIGRATIONS)

_PRAGMAS: Final = (
    "PRAGMA busy_timeout = 10000",  # first: another process may hold the lock right now
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -32000",
)


_FAILURES: Final = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
"""SQLite's primary result codes for a storage that fails under a file that may be fine."""
_DATABASE_FAULTS: Final = _FAILURES | {
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_NOLFS,
    sqlite3.SQLITE_AUTH,
}
"""The same, and a file that is wrong: what no row's content explains."""
_OS_FAILURES: Final = frozenset(
    {
        errno.EACCES,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EIO,
        errno.ENOSPC,
        errno.EPERM,
        errno.EROFS,
    }
)
"""The same for the OS: a file that could be written, where it is, once the storage allows."""


def is_database_fault(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because of the storage or the file itself, not a row's content
    (an error without an SQLite code, e.g. a closed connection, counts as the database's)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError)
    return code & 0xFF in _DATABASE_FAULTS  # the primary code of an extended one


def storage_error(path: Path, exc: sqlite3.Error | OSError, doing: str = "use") -> StorageError:
    """What an error of SQLite or the OS while `doing` ("open", "read", "write") something
    with the database at `path` means, as one line.

    Returns a StorageFailure when the storage fails (disk full, read-only file or
    filesystem, I/O error, locked too long), else a StorageError (the file is wrong).
    """
    if isinstance(exc, OSError):
        kind = StorageFailure if exc.errno in _OS_FAILURES else StorageError
        return kind(f"cannot {doing} {path}: {exc.strerror or exc}")
    # sqlite_errorcode is missing on errors the sqlite3 module raises by itself
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_NOTADB:
        return StorageError(f"{path} is not a crawl database ({exc})")
    if code == sqlite3.SQLITE_CORRUPT:
        return StorageError(f"{path} is damaged ({exc})")
    if code == sqlite3.SQLITE_READONLY:
        return StorageFailure(
            f"cannot {doing} {path}: {exc} (the file or its filesystem is read-only)"
        )
    if code in _FAILURES:
        return StorageFailure(f"cannot {doing} {path}: {exc}")
    return StorageError(f"cannot {doing} {path}: {exc}")


RESERVE_BYTES: Final = 128 * 1024
"""Disk space a run holds back (in the file `<database>-reserve`) and gives up when it ends,
so that it can record how it ended even when the disk filled up: every SQLite write needs
new space in the WAL, and one that finds none fails."""


def hold_reserve(path: Path) -> None:
    """Hold `RESERVE_BYTES` of disk space next to the database (best effort: a disk too
    full for it fails the crawl's first write soon enough)."""
    try:
        with open(f"{path}-reserve", "wb") as reserve:
            reserve.write(bytes(RESERVE_BYTES))
    except OSError:
        free_reserve(path)


def free_reserve(path: Path) -> None:
    """Give the space `hold_reserve` held back to the database (and remove its file)."""
    with suppress(OSError):
        Path(f"{path}-reserve").unlink()


def check_crawl_database(path: Path, *, application_id: int, version: int) -> None:
    """Refuse a file that is not a crawl database, or one of a newer schema than ours (its
    tables may mean something this crawler does not know).

    Raises:
        StorageError: what is wrong with the file.
    """
    if application_id != APPLICATION_ID:
        raise StorageError(f"{path} is not a crawl database")
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this crawler's {SCHEMA_VERSION}: "
            "use a newer crawler"
        )


async def connect(path: Path, *, read_only: bool = False) -> aiosqlite.Connection:
    """Open a connection to a crawl database file with the crawler's pragmas.

    Raises:
        StorageError: the file cannot be opened (a StorageFailure when the storage fails).
    """
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    doing = "read" if read_only else "open"
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise storage_error(path, exc, doing) from None
    try:
        for pragma in _PRAGMAS:
            if not (read_only and "journal_mode" in pragma):
                await conn.execute(pragma)
    except sqlite3.Error as exc:
        await _close_quietly(conn)
        raise storage_error(path, exc, doing) from None
    return conn


async def open_database(path: Path) -> aiosqlite.Connection:
    """Open (creating or migrating) a crawl database for writing.

    Every failure of SQLite or the OS here is a StorageError with a one-line message.

    Raises:
        StorageFailure: the file or its filesystem is read-only, the disk is full, an I/O
            error, the file stayed locked.
        StorageError: no such directory, or the file is not a crawl database or is newer
            than this crawler.
    """
    _check_location(path)
    conn = await connect(path)
    try:
        await _migrate(conn, path)
    except BaseException:
        await _close_quietly(conn)
        raise
    return conn


def _check_location(path: Path) -> None:
    """Refuse a path SQLite could only call "unable to open" (two stat calls, once a run)."""
    try:
        if not path.parent.is_dir():
            raise StorageError(f"directory does not exist: {path.parent}")
        if path.is_dir():
            raise StorageError(f"{path} is a directory, not a database file")
    except OSError as exc:  # is_dir() says False for most errors, not for EACCES
        raise storage_error(path, exc, "open") from None


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    """Close a connection that already failed; a second error would only hide the first."""
    with suppress(sqlite3.Error):
        await conn.close()


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    """Check that the file is a crawl database of a known version and bring it up to date.

    Everything happens under the write lock, so processes opening one new file at the same
    time see it either empty or complete, and only the first one creates the schema.
    """
    try:
        await conn.execute("BEGIN IMMEDIATE")
        version = await _scalar(conn, "PRAGMA user_version")
        app_id = await _scalar(conn, "PRAGMA application_id")
        tables = await _scalar(conn, "SELECT count(*) FROM sqlite_master")
    except sqlite3.Error as exc:
        await _rollback_quietly(conn)
        raise storage_error(path, exc, "open") from None
    try:
        # A file with no tables yet (new, or empty) becomes a crawl database.
        check_crawl_database(
            path, application_id=app_id if tables else APPLICATION_ID, version=version
        )
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                await conn.execute(statement)
        if version < SCHEMA_VERSION:
            await conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await conn.execute("COMMIT")
        else:
            # Nothing to change. But SQLite opens a file it may not write (read-only file or
            # filesystem) read-only without a word, and the crawl's first write would fail
            # far from here: a write that is rolled back fails at once if the file is
            # read-only, and touches nothing on disk otherwise (the page stays in memory).
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        await _rollback_quietly(conn)
        raise storage_error(path, exc, "write") from None
    except BaseException:
        await _rollback_quietly(conn)
        raise


async def rollback(conn: aiosqlite.Connection) -> None:
    """Roll back the connection's open transaction, if it has one.

    Safe after a cancelled `await`: the statement it waited for (a whole batch's script, say)
    goes on in aiosqlite's thread and may commit or roll back before this `ROLLBACK` runs
    there, which then finds nothing to roll back.
    """
    if not conn.in_transaction:
        return
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "no transaction is active" not in str(exc):
            raise


async def _rollback_quietly(conn: aiosqlite.Connection) -> None:
    """Roll back after a failure; a failing rollback (the disk still full) would hide it."""
    with suppress(sqlite3.Error):
        await rollback(conn)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit on its own)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [statement for statement in statements if statement]


async def _scalar(conn: aiosqlite.Connection, sql: str) -> int:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
