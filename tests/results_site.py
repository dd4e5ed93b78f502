"""A crawl database to work with: the demo catalogue crawled by the books spider, bodies stored.

The site is the bundled catalogue (`BOOKS` books) plus `/extra.html`, a page with a broken
link (`/missing.html`, also a start URL, answering 404), a product link the spider cannot read
(`/bad-book.html`: no price, so `parse_book` raises) and an offsite product link. So the
database has a typed `book` table, failed requests, a spider error and a skipped URL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler.demo import catalogue_app
from tests.conftest import RunCli, run_crawler
from tests.sites import html_page

__all__ = ["BOOKS", "copy_database", "crawl_books", "crawl_books_once", "results_site"]

BOOKS = 40

_EXTRA = html_page(
    '<a href="/missing.html">gone</a>'
    '<article class="product_pod"><h3><a href="/bad-book.html">Bad book</a></h3></article>'
    '<article class="product_pod"><h3><a href="http://offsite.invalid/book.html">Elsewhere</a>'
    "</h3></article>",
    title="Extra",
)
_BAD_BOOK = html_page('<div class="product_main"><h1>No price here</h1></div>', title="Bad")


def results_app() -> web.Application:
    """The catalogue with the extra pages described in the module docstring."""
    app = catalogue_app(book_count=BOOKS)

    async def extra(request: web.Request) -> web.Response:
        return web.Response(text=_EXTRA, content_type="text/html")

    async def bad_book(request: web.Request) -> web.Response:
        return web.Response(text=_BAD_BOOK, content_type="text/html")

    app.router.add_get("/extra.html", extra)
    app.router.add_get("/bad-book.html", bad_book)
    return app


@asynccontextmanager
async def results_site() -> AsyncIterator[BaseTestServer]:
    """Serve `results_app()` on 127.0.0.1, on a free port."""
    async with TestServer(results_app(), host="127.0.0.1") as server:
        yield server


async def crawl_books(
    run_cli: RunCli, server: BaseTestServer, db: Path, *args: str, spider: str = "books"
) -> None:
    """Crawl the site into `db` with bodies stored, from `/`, `/extra.html` and `/missing.html`."""
    starts = [str(server.make_url(path)) for path in ("/", "/extra.html", "/missing.html")]
    result = await run_cli(
        "crawl",
        spider,
        "-o",
        str(db),
        "-s",
        "store_body=true",
        *(arg for url in starts for arg in ("--start-url", url)),
        *args,
    )
    assert result.code == 0, result.stderr


def crawl_books_once(db: Path) -> Path:
    """Serve the site and crawl it into `db`, in a loop of its own (for module-scoped
    fixtures: tests then work on copies, see `copy_database`)."""

    async def main() -> None:
        async with results_site() as server:
            await crawl_books(run_crawler, server, db)

    asyncio.run(main())
    return db


def copy_database(source: Path, target: Path) -> Path:
    """Copy a crawl database (WAL included) with SQLite's backup API."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return target
