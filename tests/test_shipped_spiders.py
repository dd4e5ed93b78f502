"""The shipped spiders against recorded pages of the demo sites: exact items and requests.

The fixtures in tests/fixtures/books and tests/fixtures/quotes were recorded with
`crawler serve-demo` (and `--site quotes --port 8001`) and `crawler record`; the last test
checks they still match what the demo apps serve.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from crawler.demo import catalogue_app, expected_authors, expected_books, expected_quotes
from crawler.demo.books import BOOKS_PER_PAGE, CATEGORY_NAMES
from crawler.demo.quotes import quotes_app
from crawler.spider.testing import load_fixture, run_callback
from spiders.books import Book, BooksSpider
from spiders.quotes import Author, Quote, QuotesSpider

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BOOKS = FIXTURES / "books"
QUOTES = FIXTURES / "quotes"


def paths(urls: list[str]) -> list[str]:
    """The paths of absolute URLs (fixtures were recorded from a local port)."""
    return [URL(url).path for url in urls]


def author_slug(name: str) -> str:
    """The quotes site's author slug: ASCII letters and digits joined by hyphens."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", "-", ascii_name).strip("-")


def book(expected: dict[str, object]) -> Book:
    """The Book item the spider should yield for an `expected_books()` entry."""
    fields = {k: v for k, v in expected.items() if k != "url"}
    return Book(**fields)  # type: ignore[arg-type]


async def test_books_listing_page_follows_categories_books_and_next_page() -> None:
    result = await run_callback(BooksSpider, BOOKS / "index.json")

    assert result.items == []
    by_callback = {
        name: [r.url for r in result.requests if r.callback == name]
        for name in ("parse", "parse_book")
    }
    first_page = [str(b["url"]) for b in expected_books()[:BOOKS_PER_PAGE]]
    assert paths(by_callback["parse_book"]) == first_page
    categories = paths(by_callback["parse"])[: len(CATEGORY_NAMES)]
    assert len(set(categories)) == len(CATEGORY_NAMES)
    assert all(p.startswith("/catalogue/category/books/") for p in categories)
    assert paths(by_callback["parse"])[len(CATEGORY_NAMES) :] == ["/catalogue/page-2.html"]
    assert {r.depth for r in result.requests} == {1}


async def test_books_last_listing_page_has_no_next_page() -> None:
    result = await run_callback(BooksSpider, BOOKS / "catalogue-page-15.json", depth=14)

    book_urls = [r.url for r in result.requests if r.callback == "parse_book"]
    assert paths(book_urls) == [str(b["url"]) for b in expected_books()[14 * BOOKS_PER_PAGE :]]
    assert len([r for r in result.requests if r.callback == "parse"]) == len(CATEGORY_NAMES)
    assert {r.depth for r in result.requests} == {15}


async def test_books_category_page_lists_its_books() -> None:
    result = await run_callback(BooksSpider, BOOKS / "catalogue-category-books-travel_2-index.json")

    travel = [str(b["url"]) for b in expected_books() if b["category"] == "Travel"]
    book_urls = [r.url for r in result.requests if r.callback == "parse_book"]
    assert paths(book_urls) == travel[:BOOKS_PER_PAGE]


@pytest.mark.parametrize(
    "fixture",
    [
        "catalogue-the-library-at-the-end-of-the-orchard_300-index.json",
        "catalogue-secret-and-other-stories-inspector-vane-1_299-index.json",
    ],
)
async def test_books_product_page_gives_the_exact_book(fixture: str) -> None:
    page = load_fixture(BOOKS / fixture)
    expected = next(b for b in expected_books() if b["url"] == URL(page.url).path)

    result = await run_callback(BooksSpider, BOOKS / fixture, callback="parse_book")

    assert result.items == [book(expected)]
    assert result.requests == []


async def test_quotes_first_page_gives_its_quotes_authors_and_next_page() -> None:
    result = await run_callback(QuotesSpider, QUOTES / "index.json")

    assert result.items == [Quote(**q) for q in expected_quotes()[:10]]  # type: ignore[arg-type]
    authors = [r for r in result.requests if r.callback == "parse_author"]
    assert paths([r.url for r in authors]) == [
        f"/author/{author_slug(str(q['author']))}" for q in expected_quotes()[:10]
    ]
    assert paths([r.url for r in result.requests if r.callback == "parse"]) == ["/page/2/"]


async def test_quotes_last_page_has_no_next_page() -> None:
    result = await run_callback(QuotesSpider, QUOTES / "page-10.json")

    assert result.items == [Quote(**q) for q in expected_quotes()[90:]]  # type: ignore[arg-type]
    assert [r for r in result.requests if r.callback == "parse"] == []


async def test_quotes_author_page_gives_the_exact_author() -> None:
    result = await run_callback(
        QuotesSpider, QUOTES / "author-Wilhelmina-Ferrer.json", callback="parse_author"
    )

    expected = next(a for a in expected_authors() if a["name"] == "Wilhelmina Ferrer")
    assert result.items == [Author(**expected)]  # type: ignore[arg-type]
    assert result.requests == []


@pytest.fixture
async def demo_sites() -> AsyncIterator[dict[str, TestServer]]:
    """Both demo sites, as the fixtures were recorded from (default sizes and seeds)."""
    books = TestServer(catalogue_app(), host="127.0.0.1")
    quotes = TestServer(quotes_app(), host="127.0.0.1")
    async with books, quotes:
        yield {"books": books, "quotes": quotes}


async def test_recorded_fixtures_match_what_the_demo_sites_serve(
    demo_sites: dict[str, TestServer],
) -> None:
    fixtures = sorted(FIXTURES.glob("books/*.json")) + sorted(FIXTURES.glob("quotes/*.json"))
    assert len(fixtures) == 8
    async with aiohttp.ClientSession() as session:
        for path in fixtures:
            page = load_fixture(path)
            server = demo_sites[path.parent.name]
            async with session.get(server.make_url(URL(page.url).path_qs)) as response:
                body = await response.read()
            assert (response.status, body) == (page.status, page.body), (
                f"{path} is out of date: re-record it with `crawler record`"
            )
