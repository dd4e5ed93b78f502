"""Commands for writing spiders: `new` (scaffold a spider), `record` (save pages as test
fixtures) and `serve-demo` (run a bundled demo site on 127.0.0.1 to practise on).
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from aiohttp import web
from rich.console import Console

from crawler.cli.common import (
    DATABASE,
    UserError,
    check_start_url,
    load_crawl_settings,
    run_until_stopped,
    setup_logging,
    stop_signals,
    user_errors,
)
from crawler.cli.readonly import open_read_only
from crawler.cli.scaffold import write_spider
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Deferred, Failed
from crawler.settings import Settings
from crawler.spider.discovery import find_spider
from crawler.spider.http import Request
from crawler.spider.testing import PageFixture, save_fixture
from crawler.store.backends import describe_target
from crawler.store.pages import DamagedBody, latest_page
from crawler.store.pg_url import with_pg_errors

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection

__all__ = ["new", "record", "serve_demo"]


@click.command()
@click.argument("name")
@click.argument("url")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("spiders"),
    show_default=True,
    help="Directory to write NAME.py in.",
)
def new(name: str, url: str, directory: Path) -> None:
    """Write a new spider NAME for the site at URL, ready to crawl and to edit.

    It follows the site's links and yields one item per page with the page's title.
    """
    with user_errors():
        path = write_spider(name, url, directory)
    found_by_name = directory.resolve() == (Path.cwd() / "spiders").resolve()
    click.echo(f"created {path}; run it with: crawler crawl {name if found_by_name else path}")


@click.command()
@click.argument("spider")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fixture directory [tests/fixtures/<spider>/].",
)
@click.option(
    "--from",
    "database",
    type=DATABASE,
    help="Take the pages from this crawl database (crawled with -s store_body=true).",
)
def record(
    spider: str, urls: tuple[str, ...], output: Path | None, database: Path | str | None
) -> None:
    """Save pages as test fixtures (URL, status, headers and body) for crawler.spider.testing.

    Each page is fetched with SPIDER's settings, or read from a crawl database with --from,
    and saved as <name>.json (metadata) plus <name>.html (body), named after the URL's path.
    Ctrl-C or SIGTERM while the pages are fetched saves none of them (exit code 130).
    """
    with user_errors():
        spider_class = find_spider(spider)
        checked = [check_start_url(url) for url in urls]
        directory = output or Path("tests") / "fixtures" / spider_class.name
        failures: list[str] = []
        if database is not None:
            pages = _pages_from_database(database, checked)
            source = database.name if isinstance(database, Path) else describe_target(database)
        else:
            settings = load_crawl_settings(spider_class, None, {}).settings
            pages, failures = run_until_stopped(
                _fetch_pages(settings, checked), "record interrupted: no fixture was saved"
            )
            source = "network"
    for page in pages:
        path = save_fixture(
            directory,
            url=page.url,
            final_url=page.final_url,
            status=page.status,
            headers=page.headers,
            body=page.body,
            source=source,
        )
        click.echo(f"saved {path} ({page.status}, {len(page.body):,} bytes) from {page.url}")
    for failure in failures:
        click.echo(f"error: {failure}", err=True)
    if failures:
        sys.exit(1)


async def _fetch_pages(
    settings: Settings, urls: Sequence[str]
) -> tuple[list[PageFixture], list[str]]:
    pages: list[PageFixture] = []
    failures: list[str] = []
    async with Fetcher(settings, lambda target: None) as fetcher:
        for url in urls:
            outcome = await fetcher.fetch(Request(url))
            if isinstance(outcome, Failed):
                failures.append(f"cannot fetch {url}: {outcome.error.kind}: {outcome.error}")
            elif isinstance(outcome, Deferred):
                failures.append(f"cannot fetch {url}: the server asked to retry much later")
            else:
                pages.append(
                    PageFixture(
                        url=url,
                        final_url=outcome.url,
                        status=outcome.status,
                        headers=_joined(outcome.headers.items()),
                        body=outcome.body,
                    )
                )
    return pages, failures


def _joined(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict; repeated headers are joined with ", " (as HTTP allows)."""
    joined: dict[str, str] = {}
    for name, value in headers:
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


def _pages_from_database(database: Path | str, urls: Sequence[str]) -> list[PageFixture]:
    conn = open_read_only(database)
    try:
        return [_page_from_database(conn, database, url) for url in urls]
    except with_pg_errors(sqlite3.Error) as exc:
        raise UserError(f"cannot read pages from {database}: {exc}") from None
    finally:
        conn.close()


def _page_from_database(conn: ReadConnection, database: Path | str, url: str) -> PageFixture:
    page = latest_page(conn, url)
    if page is None:
        raise UserError(f"{database} has no page for {url}")
    try:
        content = page.body()
    except DamagedBody as exc:
        raise UserError(f"{database}: the stored body of {url} is corrupt: {exc}") from None
    if content is None:
        raise UserError(
            f"{database} has no body for {url}; crawl with -s store_body=true to keep bodies"
        )
    return PageFixture(
        url=page.url,
        final_url=page.final_url,
        status=page.status,
        headers={"Content-Type": page.content_type_header},
        body=content,
    )


@click.command(name="serve-demo")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port on 127.0.0.1 (0 picks a free one).",
)
@click.option(
    "--site",
    type=click.Choice(["books", "quotes"]),
    default="books",
    show_default=True,
    help="The book catalogue or the quotes site.",
)
@click.option("--size", type=click.IntRange(min=1), help="Books or quotes [300 books, 100 quotes].")
def serve_demo(port: int, site: str, size: int | None) -> None:
    """Serve a bundled demo site on 127.0.0.1 until Ctrl-C, to write and test spiders against.

    Crawl it from another terminal, e.g. crawler crawl books --start-url http://127.0.0.1:8000/
    """
    from crawler.demo import catalogue_app, quotes_app  # only loaded when asked for

    setup_logging("WARNING", Console(stderr=True))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))  # loopback only: the demo site is never exposed
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    if site == "books":
        app = catalogue_app(book_count=size or 300)
    else:
        app = quotes_app(quote_count=size or 100)
    asyncio.run(_serve(app, sock, f"demo {site} site"))


async def _serve(app: web.Application, sock: socket.socket, what: str) -> None:
    from crawler.demo.serve import serve_app  # only loaded when asked for

    stop = asyncio.Event()
    with stop_signals(stop.set):
        async with serve_app(app, sock) as url:
            click.echo(f"serving the {what} at {url} (Ctrl-C to stop)")
            await stop.wait()
    click.echo("stopped", err=True)
