"""The bundled demo sites: every link resolves, and the pages say what the manifests say."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from selectolax.lexbor import LexborHTMLParser, LexborNode
from yarl import URL

from crawler.demo import catalogue_app, expected_books
from crawler.demo.quotes import expected_authors, expected_quotes, quotes_app

RATINGS = {"One": 1, "Two": 2, "Three": 3, "Four": 4, "Five": 5}


@dataclass
class Walk:
    """Everything a breadth-first walk of one site saw."""

    pages: dict[str, str] = field(default_factory=dict)
    """HTML of each same-site page reached, keyed by path."""
    broken: list[str] = field(default_factory=list)
    """``"<page> -> <link>: <status>"`` for every link that did not answer 200."""
    images: set[URL] = field(default_factory=set)
    """Every ``<img src>`` seen."""


async def walk(session: aiohttp.ClientSession, root: URL) -> Walk:
    """Fetch every same-site page reachable from ``root`` through ``<a href>`` links."""
    result = Walk()
    seen = {root}
    queue = [(root, root)]
    while queue:
        page, referrer = queue.pop(0)
        async with session.get(page, allow_redirects=False) as response:
            if response.status != 200:
                result.broken.append(f"{referrer} -> {page}: {response.status}")
                continue
            assert response.content_type == "text/html"
            assert response.charset == "utf-8"
            html = await response.text()
        result.pages[page.path] = html
        tree = LexborHTMLParser(html)
        for img in tree.css("img[src]"):
            result.images.add(page.join(URL(img.attributes.get("src") or "")))
        for link in tree.css("a[href]"):
            target = page.join(URL(link.attributes.get("href") or "")).with_fragment(None)
            if target.origin() == root.origin() and target not in seen:
                seen.add(target)
                queue.append((target, page))
    return result


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to the local test servers."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def catalogue() -> AsyncIterator[TestServer]:
    """The default demo catalogue on 127.0.0.1, on a free port."""
    server = TestServer(catalogue_app(), host="127.0.0.1")
    async with server:
        yield server


@pytest.fixture
async def quotes() -> AsyncIterator[TestServer]:
    """The default demo quotes site on 127.0.0.1, on a free port."""
    server = TestServer(quotes_app(), host="127.0.0.1")
    async with server:
        yield server


async def fetch(session: aiohttp.ClientSession, url: URL) -> str:
    """GET ``url``, insisting on a 200 HTML answer."""
    async with session.get(url) as response:
        assert response.status == 200, url
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        return await response.text()


def parse_product(html: str) -> dict[str, object]:
    """Read a product page the way a books.toscrape.com scraper does."""
    tree = LexborHTMLParser(html)
    info = {
        text_in(row, "th"): text_in(row, "td") for row in tree.css("table.table.table-striped tr")
    }
    stars = tree.css_first("div.product_main p.star-rating")
    assert stars is not None
    rating_word = (stars.attributes.get("class") or "").split()[-1]
    crumbs = tree.css("ul.breadcrumb li")
    assert (
        info["Price (excl. tax)"]
        == info["Price (incl. tax)"]
        == text_in(tree, "div.product_main p.price_color")
    )
    assert text_in(tree, "div.product_main p.instock.availability") == info["Availability"]
    assert tree.css_first("div#product_description + p") is not None
    return {
        "title": text_in(tree, "div.product_main h1"),
        "price": float(text_in(tree, "div.product_main p.price_color").removeprefix("£")),
        "availability": info["Availability"],
        "rating": RATINGS[rating_word],
        "upc": info["UPC"],
        "category": text_in(crumbs[2], "a"),
    }


def text_in(node: LexborNode | LexborHTMLParser, selector: str) -> str:
    """Stripped text of the first ``selector`` match under ``node``."""
    found = node.css_first(selector)
    assert found is not None, selector
    return found.text(strip=True)


def listing_paths(books: int) -> int:
    """How many URLs a listing of ``books`` books has: ``index.html``, plus ``page-N.html``
    for every page (including ``page-1.html``, linked from page 2) when there is more than one."""
    pages = -(-books // 20)
    return 1 + (pages if pages > 1 else 0)


async def test_every_catalogue_link_resolves_and_reaches_every_product(
    catalogue: TestServer, session: aiohttp.ClientSession
) -> None:
    books = expected_books()
    site = await walk(session, catalogue.make_url("/"))
    assert site.broken == []
    assert {str(b["url"]) for b in books} <= set(site.pages)
    shelves = Counter(b["category"] for b in books)
    home = 2  # "/" and "/index.html"
    catalogue_pages = listing_paths(len(books)) - 1  # /catalogue/ has page-N.html only
    all_books = listing_paths(len(books))
    categories = sum(listing_paths(n) for n in shelves.values())
    assert len(site.pages) == len(books) + home + catalogue_pages + all_books + categories
    for image in site.images:
        async with session.get(image) as response:
            assert response.status == 200, image
            assert response.content_type == "image/jpeg"
            assert (await response.read())[:2] == b"\xff\xd8"


async def test_product_pages_parse_to_the_manifest(
    catalogue: TestServer, session: aiohttp.ClientSession
) -> None:
    for book in expected_books():
        html = await fetch(session, catalogue.make_url(str(book["url"])))
        assert parse_product(html) == {k: v for k, v in book.items() if k != "url"}


async def test_listing_pods_match_the_manifest_in_catalogue_order(
    catalogue: TestServer, session: aiohttp.ClientSession
) -> None:
    books = expected_books()
    seen: list[tuple[object, ...]] = []
    page: URL | None = catalogue.make_url("/")
    while page is not None:
        tree = LexborHTMLParser(await fetch(session, page))
        for pod in tree.css("article.product_pod"):
            link = pod.css_first("h3 a")
            stars = pod.css_first("p.star-rating")
            assert link is not None
            assert stars is not None
            rating = RATINGS[(stars.attributes.get("class") or "").split()[-1]]
            price = float(text_in(pod, "p.price_color").removeprefix("£"))
            href = page.join(URL(link.attributes.get("href") or "")).path
            seen.append((link.attributes.get("title"), price, rating, href))
            assert text_in(pod, "p.instock.availability") == "In stock"
        next_link = tree.css_first("li.next a")
        page = page.join(URL(next_link.attributes.get("href") or "")) if next_link else None
    assert seen == [(b["title"], b["price"], b["rating"], b["url"]) for b in books]


async def test_home_page_has_the_real_sites_shape(
    catalogue: TestServer, session: aiohttp.ClientSession
) -> None:
    tree = LexborHTMLParser(await fetch(session, catalogue.make_url("/")))
    categories = tree.css("div.side_categories ul li ul li a")
    assert len(categories) == 20
    assert categories[0].attributes["href"] == "catalogue/category/books/travel_2/index.html"
    assert len(tree.css("article.product_pod")) == 20
    first = tree.css_first("article.product_pod h3 a")
    assert first is not None
    assert (first.attributes.get("href") or "").startswith("catalogue/")
    next_link = tree.css_first("li.next a")
    assert next_link is not None
    assert next_link.attributes["href"] == "catalogue/page-2.html"
    assert tree.css_first("meta[charset]") is not None


async def test_category_pages_link_relatively_and_paginate(
    catalogue: TestServer, session: aiohttp.ClientSession
) -> None:
    by_category: dict[object, list[dict[str, object]]] = {}
    for book in expected_books():
        by_category.setdefault(book["category"], []).append(book)
    big = next(name for name, books in by_category.items() if len(books) > 20)
    slug = str(big).lower().replace(" ", "-")
    home = LexborHTMLParser(await fetch(session, catalogue.make_url("/")))
    href = next(
        a.attributes["href"]
        for a in home.css("div.side_categories ul li ul li a")
        if a.text(strip=True) == big
    )
    assert href is not None
    assert f"/{slug}_" in href
    first = catalogue.make_url("/").join(URL(href))
    tree = LexborHTMLParser(await fetch(session, first))
    pods = tree.css("article.product_pod h3 a")
    assert len(pods) == 20
    assert all((a.attributes.get("href") or "").startswith("../../../") for a in pods)
    next_link = tree.css_first("li.next a")
    assert next_link is not None
    assert next_link.attributes["href"] == "page-2.html"
    second = LexborHTMLParser(await fetch(session, first.join(URL("page-2.html"))))
    previous = second.css_first("li.previous a")
    assert previous is not None
    assert previous.attributes["href"] == "page-1.html"
    assert len(pods) + len(second.css("article.product_pod")) == len(by_category[big])


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/catalogue/page-999.html",
        "/catalogue/page-0.html",
        "/catalogue/no-such-book_1/index.html",
        "/catalogue/category/books/no-such_99/index.html",
        "/media/cache/00/00/00000000000000000000000000000000.jpg",
    ],
)
async def test_unknown_catalogue_paths_are_html_404s(
    catalogue: TestServer, session: aiohttp.ClientSession, path: str
) -> None:
    async with session.get(catalogue.make_url(path)) as response:
        assert response.status == 404
        assert response.content_type == "text/html"
        assert "404" in await response.text()


async def test_robots_txt_allows_everything(
    catalogue: TestServer, quotes: TestServer, session: aiohttp.ClientSession
) -> None:
    for server in (catalogue, quotes):
        async with session.get(server.make_url("/robots.txt")) as response:
            assert response.status == 200
            assert await response.text() == "User-agent: *\nAllow: /\n"


async def test_same_seed_gives_identical_html_and_other_seeds_differ(
    session: aiohttp.ClientSession,
) -> None:
    book = str(expected_books(40, seed=11)[7]["url"])
    paths = ["/", "/catalogue/page-2.html", "/catalogue/category/books_1/index.html", book]
    pages = []
    for _ in range(2):
        async with TestServer(catalogue_app(40, seed=11), host="127.0.0.1") as server:
            pages.append([await fetch(session, server.make_url(p)) for p in paths])
    assert pages[0] == pages[1]
    assert expected_books(40, seed=11) == expected_books(40, seed=11)
    assert expected_books(40, seed=11) != expected_books(40, seed=12)
    assert expected_quotes(30, seed=5) == expected_quotes(30, seed=5)
    assert expected_quotes(30, seed=5) != expected_quotes(30, seed=6)


def test_manifest_values_are_well_formed() -> None:
    books = expected_books()
    assert len(books) == 300
    assert len({b["upc"] for b in books}) == 300
    assert len({b["url"] for b in books}) == 300
    assert len({b["category"] for b in books}) == 20
    for book in books:
        upc, price = book["upc"], book["price"]
        assert isinstance(upc, str)
        assert len(upc) == 16
        assert int(upc, 16) >= 0
        assert isinstance(price, float)
        assert 10 <= price < 60
        assert book["rating"] in {1, 2, 3, 4, 5}
        assert str(book["availability"]).startswith("In stock (")


async def test_every_quotes_link_resolves(
    quotes: TestServer, session: aiohttp.ClientSession
) -> None:
    site = await walk(session, quotes.make_url("/"))
    assert site.broken == []
    assert {f"/page/{n}/" for n in range(2, 11)} <= set(site.pages)
    authors = {p for p in site.pages if p.startswith("/author/")}
    assert len(authors) == len(expected_authors())


async def test_quote_pages_parse_to_the_manifest(
    quotes: TestServer, session: aiohttp.ClientSession
) -> None:
    seen: list[dict[str, object]] = []
    page: URL | None = quotes.make_url("/")
    while page is not None:
        tree = LexborHTMLParser(await fetch(session, page))
        blocks = tree.css("div.quote")
        assert 0 < len(blocks) <= 10
        for block in blocks:
            about = block.css_first("a[href^='/author/']")
            assert about is not None
            assert about.text(strip=True) == "(about)"
            seen.append({
                "text": text_in(block, "span.text"),
                "author": text_in(block, "small.author"),
                "tags": [tag.text(strip=True) for tag in block.css("div.tags a.tag")],
            })  # fmt: skip
        next_link = tree.css_first("li.next a")
        page = page.join(URL(next_link.attributes.get("href") or "")) if next_link else None
    assert seen == expected_quotes()
    assert all(str(q["text"]).startswith("“") and str(q["text"]).endswith("”") for q in seen)


async def test_author_pages_parse_to_the_manifest(
    quotes: TestServer, session: aiohttp.ClientSession
) -> None:
    links: dict[str, str] = {}
    for number in range(1, 11):
        tree = LexborHTMLParser(await fetch(session, quotes.make_url(f"/page/{number}/")))
        for block in tree.css("div.quote"):
            about = block.css_first("a[href^='/author/']")
            assert about is not None
            links.setdefault(text_in(block, "small.author"), about.attributes.get("href") or "")
    pages = []
    for href in links.values():
        tree = LexborHTMLParser(await fetch(session, quotes.make_url(href)))
        pages.append({
            "name": text_in(tree, "h3.author-title"),
            "born": text_in(tree, "span.author-born-date"),
            "born_location": text_in(tree, "span.author-born-location"),
        })  # fmt: skip
    assert pages == expected_authors()


async def test_unknown_quotes_paths_are_html_404s(
    quotes: TestServer, session: aiohttp.ClientSession
) -> None:
    for path in ("/nope", "/author/Nobody-At-All", "/page/0/"):
        async with session.get(quotes.make_url(path)) as response:
            assert response.status == 404, path
            assert response.content_type == "text/html"


async def test_quote_pages_past_the_end_say_no_quotes_found(
    quotes: TestServer, session: aiohttp.ClientSession
) -> None:
    tree = LexborHTMLParser(await fetch(session, quotes.make_url("/page/11/")))
    assert tree.css("div.quote") == []
    assert tree.css_first("li.next a") is None
    assert "No quotes found!" in text_in(tree, "body")
