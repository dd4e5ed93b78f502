"""The crawl database's schema, its version, and opening a file as a crawl database.

Tables (one SQLite file per crawl target, WAL mode):

- `crawls`   one row per run: spider, start/end time, status, settings and final stats (JSON)
- `requests` every URL the crawl admitted or refused, with its state
             (`pending`, `done`, `failed`, `skipped`) and reason; this is also the frontier
- `pages`    one row per HTTP response received (status, type, size, timing, optional body)
- `links`    every `<a href>` of every parsed page (from_url → to_url)
- `items`    every item a callback yielded: type name and JSON data (`json_extract` works)
- `errors`   every failed attempt, spider exception and rejected item
- `robots`   every robots.txt fetched: status, outcome (rules, allow_all, disallow_all), text
- `item_errors` every item refused by validation: URL, callback, type, field, message, data
- `item_keys`   de-duplication keys of stored items (`Spider.dedupe_items_by`), one per type
- `frontier_counts`, `hosts`  requests admitted (not skipped) in the file and per host, kept
                by triggers: what `max_pages` and `max_pages_per_host` count
- `item_tables` the typed item tables (`book`, one column per dataclass field) and the views
                of dict item types (`quote_view`), made by crawler.store.item_tables

The schema version is `PRAGMA user_version`; `PRAGMA application_id` marks crawl databases.

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

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "check_crawl_database",
    "connect",
    "open_database",
    "rollback",
    "storage_error",
]

APPLICATION_ID: Final = 0x43524C31  # "CRL1"

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE crawls (
        id            INTEGER PRIMARY KEY,
        spider        TEXT NOT NULL,
        started_at    TEXT NOT NULL,
        finished_at   TEXT,
        status        TEXT NOT NULL,  -- running|finished|interrupted|stopped|crashed|failed
        reason        TEXT,
        settings      TEXT NOT NULL,          -- JSON: the effective settings
        stats         TEXT,                   -- JSON: the final summary of this run
        pid           INTEGER,
        hostname      TEXT,
        heartbeat_at  REAL                    -- unix time, refreshed while the run is alive
    );
    CREATE TABLE requests (
        id            INTEGER PRIMARY KEY,
        url           TEXT NOT NULL,
        fingerprint   INTEGER NOT NULL UNIQUE,  -- 64-bit hash of the canonical request
        host          TEXT NOT NULL,
        method        TEXT NOT NULL DEFAULT 'GET',
        callback      TEXT,
        headers       TEXT,                   -- JSON or NULL
        meta          TEXT,                   -- JSON or NULL
        depth         INTEGER NOT NULL,
        priority      INTEGER NOT NULL DEFAULT 0,
        state         TEXT NOT NULL,          -- pending | done | failed | skipped
        reason        TEXT,                   -- why failed or skipped
        attempts      INTEGER NOT NULL DEFAULT 0,
        not_before    REAL,                   -- unix time before which it is not fetched
        lease_owner   INTEGER,                -- crawls.id of the run that claimed it
        lease_expires REAL,
        parent_id     INTEGER,                -- requests.id of the page that linked here
        crawl_id      INTEGER NOT NULL,       -- run that discovered it
        discovered_at TEXT NOT NULL,
        finished_at   TEXT
    );
    CREATE INDEX requests_frontier ON requests (host, priority DESC, id)
        WHERE state = 'pending';              -- claims: hosts take turns (crawler.store.writer)
    CREATE TABLE pages (
        id            INTEGER PRIMARY KEY,
        request_id    INTEGER NOT NULL UNIQUE REFERENCES requests (id),
        crawl_id      INTEGER NOT NULL,
        url           TEXT NOT NULL,
        final_url     TEXT NOT NULL,
        status        INTEGER NOT NULL,
        content_type  TEXT NOT NULL,
        encoding      TEXT,
        size_bytes    INTEGER NOT NULL,
        depth         INTEGER NOT NULL,
        elapsed_ms    REAL NOT NULL,
        fetched_at    TEXT NOT NULL,
        body          BLOB                    -- gzip-compressed, when store_body is on
    );
    CREATE TABLE links (
        page_id       INTEGER NOT NULL REFERENCES pages (id),
        from_url      TEXT NOT NULL,
        to_url        TEXT NOT NULL
    );
    CREATE TABLE items (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        request_id    INTEGER NOT NULL,
        page_url      TEXT NOT NULL,
        type          TEXT NOT NULL,
        data          TEXT NOT NULL,          -- JSON object
        created_at    TEXT NOT NULL
    );
    CREATE INDEX items_type ON items (type);
    CREATE TABLE errors (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        request_id    INTEGER,
        url           TEXT NOT NULL,
        kind          TEXT NOT NULL,          -- timeout | connection | protocol | http_status |
                                              -- too_large | redirect | spider | item | blocking
        message       TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        callback      TEXT,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE robots (
        url           TEXT PRIMARY KEY,       -- the robots.txt URL: scheme://host[:port]/robots.txt
        host          TEXT NOT NULL,
        fetched_at    TEXT NOT NULL,
        status        INTEGER,                -- HTTP status; NULL when no response arrived
        outcome       TEXT NOT NULL,          -- rules | allow_all | disallow_all
        crawl_delay   REAL,                   -- Crawl-delay of user_agent's group, seconds
        body          TEXT,                   -- the robots.txt (first 500 KiB), for rules
        error         TEXT,                   -- why allow_all or disallow_all
        crawl_id      INTEGER NOT NULL
    );
    CREATE TABLE item_errors (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        request_id    INTEGER,
        url           TEXT NOT NULL,
        callback      TEXT,
        item_type     TEXT NOT NULL,
        field         TEXT NOT NULL,          -- the first bad field: price, tags[2]
        message       TEXT NOT NULL,          -- every problem found in the item
        data          TEXT NOT NULL,          -- JSON: the item as yielded
        created_at    TEXT NOT NULL
    );
    CREATE TABLE item_keys (
        type          TEXT NOT NULL,
        key_hash      INTEGER NOT NULL,       -- 64-bit hash of key
        key           TEXT NOT NULL,          -- JSON array of the key fields' values
        crawl_id      INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        UNIQUE (type, key_hash)
    );
    CREATE TABLE item_tables (
        type          TEXT NOT NULL,          -- item type name, as in items.type
        kind          TEXT NOT NULL,          -- table (dataclass items) | view (dict items)
        name          TEXT NOT NULL UNIQUE,   -- the table or view: book, quote_view
        columns       TEXT NOT NULL,          -- JSON object: field or key -> column
        json_columns  TEXT NOT NULL,          -- JSON array: columns holding JSON text
        last_item_id  INTEGER NOT NULL DEFAULT 0,  -- views: items.id scanned for new keys
        PRIMARY KEY (type, kind)
    );
    """,
    # 2: URLs refused only for a run's page budget, which a resume reopens; without this
    # index, finding them scanned every request at the start of every run.
    """
    CREATE INDEX requests_budget_skips ON requests (host, id)
        WHERE state = 'skipped' AND reason IN ('max_pages', 'max_pages_per_host');
    """,
    # 3: what the page budgets count, kept by triggers in every write of every process on
    # the file, so that a batch reads two counters instead of counting `requests`.
    """
    CREATE TABLE frontier_counts (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        admitted      INTEGER NOT NULL        -- requests not skipped: what max_pages counts
    );
    INSERT INTO frontier_counts (id, admitted)
        SELECT 1, count(*) FROM requests WHERE state != 'skipped';
    CREATE TABLE hosts (
        host          TEXT PRIMARY KEY,
        admitted      INTEGER NOT NULL        -- the same per host: max_pages_per_host
    ) WITHOUT ROWID;
    INSERT INTO hosts (host, admitted)
        SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host;
    CREATE TRIGGER requests_count_insert AFTER INSERT ON requests
        WHEN NEW.state != 'skipped'
    BEGIN
        UPDATE frontier_counts SET admitted = admitted + 1;
        INSERT INTO hosts (host, admitted) VALUES (NEW.host, 1)
            ON CONFLICT (host) DO UPDATE SET admitted = admitted + 1;
    END;
    CREATE TRIGGER requests_count_skip AFTER UPDATE OF state ON requests
        WHEN OLD.state != 'skipped' AND NEW.state = 'skipped'
    BEGIN
        UPDATE frontier_counts SET admitted = admitted - 1;
        UPDATE hosts SET admitted = admitted - 1 WHERE host = OLD.host;
    END;
    CREATE TRIGGER requests_count_reopen AFTER UPDATE OF state ON requests
        WHEN OLD.state = 'skipped' AND NEW.state != 'skipped'
    BEGIN
        UPDATE frontier_counts SET admitted = admitted + 1;
        INSERT INTO hosts (host, admitted) VALUES (NEW.host, 1)
            ON CONFLICT (host) DO UPDATE SET admitted = admitted + 1;
    END;
    """,
)
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
