"""What every command shares: error translation to exit codes, settings layers, start URLs,
logging, and running a crawl under signal handling (read-only database access is in
crawler.cli.readonly).

Exit codes: 2 for bad input (the crawler's own errors, a file that is not a crawl database,
a spider with nothing to start from); 1 when the storage fails (StorageFailure: disk full,
read-only, I/O error), at start-up as mid-crawl, or when every start request of a crawl
failed; 130 when interrupted by Ctrl-C or SIGTERM. Each is one line on stderr, never a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from yarl import URL

from crawler.engine.crawl import Crawl
from crawler.errors import ConfigError, CrawlerError, StorageError, StorageFailure
from crawler.links import normalise_domain
from crawler.settings import LoadedSettings, load_settings, read_config_file
from crawler.spider.base import Spider
from crawler.store.pg_url import is_postgres_url, with_pg_driver_errors, with_pg_errors
from crawler.store.schema import storage_error

if TYPE_CHECKING:
    from crawler.store.pg_read import PgReader

__all__ = [
    "DATABASE",
    "DEFAULT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "StorageFailed",
    "UserError",
    "cancelled_by_signals",
    "check_start_url",
    "check_starts_somewhere",
    "failed_start",
    "load_crawl_settings",
    "parse_assignments",
    "run_until_stopped",
    "run_with_signals",
    "setup_logging",
    "stop_signals",
    "stopped_by_signals",
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


class DatabaseTarget(click.ParamType):  # type: ignore[type-arg]
    """A crawl database on the command line: a file path, or a PostgreSQL URL kept as text."""

    name = "database"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path | str:
        if isinstance(value, Path):
            return value
        text = str(value)
        return text if is_postgres_url(text) else Path(text)


DATABASE: Final = DatabaseTarget()


def failed_start(db: Path | str, after_run: int, pages: int) -> str | None:
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
    if isinstance(db, str):
        from crawler.store.pg_read import PgReader  # loads asyncpg (crawler.store.pg_url)
        from crawler.store.pg_schema import pg_error

        reader = PgReader(db, write=True)
        try:
            message = _reset_failed_starts(reader, after_run)
        except with_pg_errors() as exc:
            raise pg_error(db, exc, "write") from None
        finally:
            reader.close()  # commits
    else:
        try:
            with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    message = _reset_failed_starts(conn, after_run)
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise storage_error(db, exc, "write") from None
    if message is None:
        return None
    return f"{message}; run the same command again to retry them"


def _reset_failed_starts(conn: sqlite3.Connection | PgReader, after_run: int) -> str | None:
    """Put failed start requests back to pending and mark the runs failed, when every start
    request failed; return why (None when some did not fail)."""
    starts = conn.execute(
        "SELECT state, reason FROM requests WHERE parent_id IS NULL AND state != 'skipped'"
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
        "UPDATE crawls SET status = 'failed', reason = ? WHERE id > ? AND status = 'finished'",
        (message[:500], after_run),
    )
    return message


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
    layers = spider.setting_layers() if spider is not None else {}
    return load_settings(config=table, overrides=overrides, **layers)


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


STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals(
    on_signal: Callable[[], object], signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[None]:
    """Call `on_signal` in the running event loop on each of `signals` while inside, then put
    back the handlers found on entry.

    A signal ignored on entry stays ignored, as Unix programs leave it: a non-interactive
    shell starts `command &` with SIGINT ignored so that a Ctrl-C meant for the script does
    not reach its background jobs (SIGTERM still stops them). Putting the handlers back
    matters for a command run inside another program (click's CliRunner, a test): asyncio's
    `remove_signal_handler` (and closing the loop) would leave the defaults instead.
    """
    loop = asyncio.get_running_loop()
    previous = {
        sig: handler for sig in signals if (handler := signal.getsignal(sig)) != signal.SIG_IGN
    }
    for sig in previous:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:  # None: not set from Python, cannot be put back
                signal.signal(sig, handler)


_T = TypeVar("_T")


async def cancelled_by_signals(work: Awaitable[_T]) -> _T:
    """Await `work` (inside asyncio.run); each SIGINT or SIGTERM cancels it: a second one
    cuts short what the first's cancellation waits for (a reparse's workers), but not what
    runs to its end (crawler.engine.crawl.run_to_the_end: a rollback). Not by way of
    asyncio.run's KeyboardInterrupt, which stops the loop wherever it is. A signal ignored
    on entry stays ignored (see `stop_signals`)."""
    task = asyncio.current_task()
    assert task is not None  # run by asyncio.run
    with stop_signals(task.cancel):
        return await work


def run_until_stopped(work: Coroutine[Any, Any, _T], interrupted: str) -> _T:
    """Run `work` (asyncio.run), cancelled by SIGINT and SIGTERM (`cancelled_by_signals`):
    then `interrupted` is the one line on stderr, and the exit code 130."""
    try:
        return asyncio.run(cancelled_by_signals(work))
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo(interrupted, err=True)
        sys.exit(EXIT_INTERRUPTED)


@contextmanager
def stopped_by_signals(interrupted: str) -> Iterator[None]:
    """Run the block (blocking work: a query, an export) so that SIGINT and SIGTERM stop it
    (KeyboardInterrupt); then `interrupted` is the one line on stderr, and the exit code 130.

    Once a signal has come, whatever the block raises is taken for the interruption (an
    interrupted SQLite statement fails with "interrupted"). While an event loop runs (a
    PostgreSQL reader's) a signal cancels its tasks instead, so that asyncpg cancels the
    statement and closes cleanly. A signal ignored on entry stays ignored; the handlers
    found are put back.
    """
    came: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        came.append(signum)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: stop what runs
            raise KeyboardInterrupt from None
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wakes the loop from its wait for I/O

    main = threading.current_thread() is threading.main_thread()  # the one that may set them
    found = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS if main}
    previous = {sig: handler for sig, handler in found.items() if handler != signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield
    except BaseException:
        if not came:
            raise
        click.echo(interrupted, err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def run_with_signals(
    run: Crawl, during: AbstractAsyncContextManager[object] | None = None
) -> dict[str, Any]:
    """Run a crawl (inside `during`, e.g. a local server); the first SIGINT/SIGTERM stops it
    gracefully, the second cancels it. A signal ignored when it starts stays ignored: SIGTERM
    stops a crawl started with SIGINT ignored (see `stop_signals`)."""

    async def main() -> dict[str, Any]:
        task = asyncio.current_task()
        presses = 0

        def on_signal() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                run.stop("interrupted")
            elif task is not None:
                task.cancel()

        with stop_signals(on_signal):
            async with during or nullcontext():
                return await run.run()

    _tune_garbage_collector()
    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("crawl cancelled; the database holds everything committed so far", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except with_pg_driver_errors(StorageError, sqlite3.Error) as exc:
        # open_database translates its own errors; the run's first writes (starting the
        # run, declaring item tables) come after it and may meet a full disk too.
        error = _storage_error(run.db, exc)
        if not run.started:
            raise error from None  # user_errors: a wrong file 2, failing storage 1
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_FAILURE)


def _storage_error(db: Path | str, exc: Exception) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(db, str):
        from crawler.store.pg_schema import pg_error

        return pg_error(db, exc, "write")
    assert isinstance(exc, sqlite3.Error)
    return storage_error(db, exc, "write")


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
