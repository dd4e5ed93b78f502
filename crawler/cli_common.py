"""What every command shares: error translation to exit codes, settings layers, start URLs,
logging, read-only database access, and running a crawl under signal handling.
"""

from __future__ import annotations

import asyncio
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

from crawler.engine import Crawl
from crawler.errors import ConfigError, CrawlerError, StorageError
from crawler.frontier import normalise_domain
from crawler.schema import APPLICATION_ID
from crawler.settings import LoadedSettings, load_settings, read_config_file
from crawler.spider import Spider

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "UserError",
    "check_start_url",
    "load_crawl_settings",
    "open_crawl_database",
    "open_read_only",
    "parse_assignments",
    "run_with_signals",
    "setup_logging",
    "user_errors",
    "with_start_urls",
]

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


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the crawler's own errors into one line on stderr and exit code 2."""
    try:
        yield
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
    except StorageError as exc:
        if not run.started:
            raise  # the file was unusable from the start: bad input, exit 2
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


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


def open_read_only(path: Path, *, write: bool = False) -> sqlite3.Connection:
    """Open an existing SQLite file, read-only (`?mode=ro`) unless `write`.

    Raises:
        StorageError: the file does not exist or is not an SQLite database.
    """
    if not path.is_file():
        raise StorageError(f"no such database file: {path}")
    uri = path.resolve().as_uri() + ("?mode=rw" if write else "?mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    return conn


def open_crawl_database(path: Path) -> sqlite3.Connection:
    """Open a crawl database read-only, refusing other SQLite files."""
    conn = open_read_only(path)
    if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        conn.close()
        raise StorageError(f"{path} is not a crawl database")
    return conn
