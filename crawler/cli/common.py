"""What every command shares: error translation to exit codes, settings layers, start URLs,
logging, read-only database access, and running a crawl under signal handling.

Exit codes: 2 for bad input (the crawler's own errors, a file that is not a crawl database,
a spider with nothing to start from); 1 when the storage fails (StorageFailure: disk full,
read-only, I/O error), at start-up as mid-crawl, or when every start request of a crawl
failed; 130 when interrupted. Each is one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.logging import RichHandler
from yarl import URL

from crawler.engine.crawl import Crawl
from crawler.errors import ConfigError, CrawlerError, StorageError, StorageFailure
from crawler.links import normalise_domain
from crawler.settings import LoadedSettings, load_settings, read_config_file
from crawler.spider.base import Spider
from crawler.store.schema import check_crawl_database, storage_error

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "ReadOnlyGuard",
    "StorageFailed",
    "UserError",
    "check_start_url",
    "check_starts_somewhere",
    "failed_start",
    "load_crawl_settings",
    "open_crawl_database",
    "open_read_only",
    "parse_assignments",
    "run_with_signals",
    "setup_logging",
    "user_errors",
    "with_start_urls",
]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
DEFAULT_CONFIG: Final = Path("config.toml")
_GC_YOUNG_THRESHOLD: Final = 10_000
"""Allocations between collections of the youngest generation during a crawl (Python: 700)."""


class UserError(click.ClickException):
    """Bad input: printed as one line, exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class StorageFailed(UserError):
    """The storage failed (disk full, read-only, I/O error): one line, exit code 1."""

    exit_code = EXIT_FAILURE


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the crawler's own errors into one line on stderr: exit code 1 when the storage
    fails (StorageFailure), else 2."""
    try:
        yield
    except StorageFailure as exc:
        raise StorageFailed(str(exc)) from None
    except CrawlerError as exc:
        raise UserError(str(exc)) from None


def parse_assignments(values: Sequence[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"command line: -s expects key=value, got {value!r}")
        overrides[key.strip()] = raw.strip()
    return overrides


def check_start_url(url: str) -> str:
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad start URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ConfigError(f"bad start URL {url!r}: expected an absolute http:// or https:// URL")
    return url


def check_starts_somewhere(spider: type[Spider]) -> None:
    """Refuse a spider that has nothing to start from: no start URLs and the default
    `start_requests()` (the shipped `site` spider without `--start-url`).

    Raises:
        ConfigError: before any file is created, so that a script sees exit code 2 and no
            empty database is left behind.
    """
    if not spider.start_urls and spider.start_requests is Spider.start_requests:
        raise ConfigError(
            f"spider {spider.name!r} has no start URLs: give one with --start-url URL"
        )


_SHOWN_REASONS: Final = 3


def failed_start(db: Path, after_run: int, pages: int) -> str | None:
    """Why the crawl in `db` failed at its start, or None when it did not.

    It did when the runs after `after_run` fetched no page (`pages`) while every start
    request the crawl admitted has failed: a site that refuses every connection, a mistyped
    host. A failed request is final, so those requests are put back to pending and the runs
    marked failed: the same command retries them once the site answers.

    Raises:
        StorageFailure: the database could not be read or written.
    """
    if pages:
        return None
    try:
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("BEGIN IMMEDIATE")
            try:
                starts = conn.execute(
                    "SELECT state, reason FROM requests"
                    " WHERE parent_id IS NULL AND state != 'skipped'"
                ).fetchall()
                if not starts or any(state != "failed" for state, _ in starts):
                    return None
                reasons = list(dict.fromkeys(" ".join((r or "?").split()) for _, r in starts))
                why = "; ".join(reasons[:_SHOWN_REASONS])
                if len(reasons) > _SHOWN_REASONS:
                    why += f"; {len(reasons) - _SHOWN_REASONS} more"
                message = f"every start request failed ({why})"
                conn.execute(
                    "UPDATE requests SET state = 'pending', reason = NULL, attempts = 0,"
                    " not_before = NULL, finished_at = NULL"
                    " WHERE parent_id IS NULL AND state = 'failed'"
                )
                conn.execute(
                    "UPDATE crawls SET status = 'failed', reason = ?"
                    " WHERE id > ? AND status = 'finished'",
                    (message[:500], after_run),
                )
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise storage_error(db, exc, "write") from None
    return f"{message}; run the same command again to retry them"


def with_start_urls(spider: type[Spider], urls: Sequence[str]) -> type[Spider]:
    """Return a subclass of `spider` that starts at `urls` and may visit their hosts."""
    hosts = [normalise_domain(URL(u).raw_host or "") for u in urls]
    domains = [*spider.allowed_domains, *hosts]
    attrs = {
        "name": spider.name,
        "start_urls": list(urls),
        "allowed_domains": domains,
        "__module__": spider.__module__,
        "__doc__": spider.__doc__,
    }
    return type(spider.__name__, (spider,), attrs)


def load_crawl_settings(
    spider: type[Spider] | None, config: Path | None, overrides: dict[str, object]
) -> LoadedSettings:
    """Merge defaults, the config file (given, or ./config.toml), the spider's and ours."""
    if config is not None:
        table = read_config_file(config)
    elif DEFAULT_CONFIG.is_file():
        table = read_config_file(DEFAULT_CONFIG)
    else:
        table = {}
    spider_layer = spider.settings if spider is not None else None
    return load_settings(config=table, spider=spider_layer, overrides=overrides)


def setup_logging(level: str, console: Console) -> None:
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if level.upper() == "WARNING":
        logging.getLogger("crawler.stats").setLevel(logging.INFO)


def run_with_signals(
    run: Crawl, during: AbstractAsyncContextManager[object] | None = None
) -> dict[str, Any]:
    """Run a crawl (inside `during`, e.g. a local server); the first SIGINT/SIGTERM stops it
    gracefully, the second cancels it."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        presses = 0

        def on_signal() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                run.stop("interrupted")
            elif task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            async with during or nullcontext():
                return await run.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    _tune_garbage_collector()
    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("crawl cancelled; the database holds everything committed so far", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (StorageError, sqlite3.Error) as exc:
        # open_database translates its own errors; the run's first writes (starting the
        # run, declaring item tables) come after it and may meet a full disk too.
        error = exc if isinstance(exc, StorageError) else storage_error(run.db, exc, "write")
        if not run.started:
            raise error from None  # user_errors: a wrong file 2, failing storage 1
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_FAILURE)


def _tune_garbage_collector() -> None:
    """Make Python's cycle collector run less often during a crawl (the command's process
    is the crawl's alone; library users keep their own settings).

    A crawl allocates many short-lived containers per page, and with the default threshold
    the young generation is collected every 700 of them, several hundred times per 10,000
    pages, ~4% of the crawl's CPU. Everything loaded so far (modules, the spider, settings)
    is moved out of the collector's sight for good (`gc.freeze`).
    """
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, 10, 10)


def open_read_only(
    path: Path, *, write: bool = False, guard: ReadOnlyGuard | None = None
) -> sqlite3.Connection:
    """Open an existing SQLite file, read-only unless `write`. Read-only, the connection
    cannot write any file at all, this one or another: `?mode=ro` and a ReadOnlyGuard
    (`guard`, if given, to learn why a statement was refused).

    Raises:
        StorageError: the file does not exist or is not an SQLite database (StorageFailure:
            it cannot be read).
    """
    if not path.is_file():
        raise StorageError(f"no such database file: {path}")
    uri = path.resolve().as_uri() + ("?mode=rw" if write else "?mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise storage_error(path, exc, "read") from None
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if not write:
            (guard or ReadOnlyGuard()).install(conn)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise storage_error(path, exc, "read") from None
    return conn


def open_crawl_database(path: Path) -> sqlite3.Connection:
    """Open a crawl database read-only, refusing other SQLite files and newer schemas."""
    conn = open_read_only(path)
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
