"""Sitemaps: parsing (urlset, index, gzip, text, lastmod, hostile XML) and SitemapSpider
crawling a site through robots.txt, a sitemap index and gzipped sitemaps."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler import Item, Response, SitemapSpider, SpiderError, crawl, text_of
from crawler.spider.sitemaps import SitemapEntry, iter_sitemap, parse_lastmod
from tests.conftest import rows, scalar
from tests.polite_sites import VISITS, page_site

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


def urlset(*entries: tuple[str, str | None]) -> bytes:
    urls = "".join(
        f"<url><loc>{loc}</loc>{f'<lastmod>{mod}</lastmod>' if mod else ''}</url>"
        for loc, mod in entries
    )
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {NS}>{urls}</urlset>'.encode()


def index(*locs: str) -> bytes:
    maps = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0"?><sitemapindex {NS}>{maps}</sitemapindex>'.encode()


def test_a_urlset_yields_its_urls_with_lastmod() -> None:
    body = urlset(("http://a.test/1", "2024-05-01"), ("http://a.test/2", None))
    assert list(iter_sitemap(body)) == [
        SitemapEntry("http://a.test/1", datetime(2024, 5, 1, tzinfo=UTC)),
        SitemapEntry("http://a.test/2"),
    ]


def test_an_index_yields_sitemaps_and_gzip_is_undone() -> None:
    body = gzip.compress(index("http://a.test/s1.xml", "http://a.test/s2.xml.gz"))
    assert [(e.loc, e.is_sitemap) for e in iter_sitemap(body)] == [
        ("http://a.test/s1.xml", True),
        ("http://a.test/s2.xml.gz", True),
    ]


def test_a_sitemap_without_namespace_and_a_text_sitemap_are_read() -> None:
    bare = b"<urlset><url><loc> http://a.test/x </loc></url></urlset>"
    assert [e.loc for e in iter_sitemap(bare)] == ["http://a.test/x"]
    text = b"http://a.test/1\r\n\nnot a url\nhttps://a.test/2"
    assert [e.loc for e in iter_sitemap(text)] == ["http://a.test/1", "https://a.test/2"]


def test_a_large_sitemap_is_streamed_entry_by_entry() -> None:
    entries = [(f"http://a.test/{n}", None) for n in range(20_000)]
    found = iter_sitemap(gzip.compress(urlset(*entries)))
    assert next(found).loc == "http://a.test/0"
    assert sum(1 for _ in found) == 19_999


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><urlset><url><loc>&lol2;</loc></url></urlset>',
            "DTD",
        ),
        (b"<html><body>not a sitemap</body></html>", "not a sitemap: root element <html>"),
        (b"<urlset><url><loc>http://a.test/1</loc></url>", "not well-formed"),
        (gzip.compress(b"<urlset>" + b" " * (51 * 1024 * 1024)), "larger than"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzipped sitemap"),
    ],
    ids=["entities", "html", "truncated", "gzip-bomb", "corrupt-gzip"],
)
def test_hostile_or_broken_sitemaps_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(iter_sitemap(body))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-05", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-02T10:30:00Z", datetime(2024, 5, 2, 10, 30, tzinfo=UTC)),
        ("2024-05-02T12:30+02:00", datetime(2024, 5, 2, 10, 30, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
    ],
)
def test_lastmod_accepts_w3c_datetimes(text: str | None, expected: datetime | None) -> None:
    assert parse_lastmod(text) == expected


def sitemap_app() -> web.Application:
    """robots.txt → sitemap index → a gzipped file and a Content-Encoding gzip sitemap."""
    app = page_site(
        {
            "/product/1": "<h1>One</h1>",
            "/product/2": "<h1>Two</h1>",
            "/product/old": "<h1>Old</h1>",
            "/about": "<h1>About</h1>",
            "/contact": "<h1>Contact</h1>",
        }
    )

    def base(request: web.Request) -> str:
        return f"http://{request.host}"

    async def robots(request: web.Request) -> web.Response:
        text = f"User-agent: *\nAllow: /\nSitemap: {base(request)}/sitemap_index.xml\n"
        return web.Response(text=text, content_type="text/plain")

    async def sitemap_index(request: web.Request) -> web.Response:
        b = base(request)
        body = index(f"{b}/sitemap-products.xml.gz", f"{b}/sitemap-pages.xml", f"{b}/ignored.xml")
        return web.Response(body=body, content_type="application/xml")

    async def products(request: web.Request) -> web.Response:
        b = base(request)
        body = urlset(
            (f"{b}/product/1", "2024-01-01"),
            (f"{b}/product/2", "2024-02-01T08:00:00Z"),
            (f"{b}/product/old", "2009-12-31"),
        )
        return web.Response(body=gzip.compress(body), content_type="application/x-gzip")

    async def pages(request: web.Request) -> web.Response:
        b = base(request)
        body = gzip.compress(urlset((f"{b}/about", None), (f"{b}/contact", None)))
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/xml; charset=utf-8"}
        return web.Response(body=body, headers=headers)

    async def ignored(request: web.Request) -> web.Response:
        return web.Response(body=urlset((f"{base(request)}/about", None)), content_type="text/xml")

    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/sitemap_index.xml", sitemap_index)
    app.router.add_get("/sitemap-products.xml.gz", products)
    app.router.add_get("/sitemap-pages.xml", pages)
    app.router.add_get("/ignored.xml", ignored)
    return app


class ShopSitemapSpider(SitemapSpider):
    name = "shop_sitemap"
    sitemap_rules = ((r"/product/", "parse_product"), (r"/about$", "parse"))
    sitemap_follow = (r"products", r"pages")

    def sitemap_filter(self, entry: SitemapEntry) -> bool:
        return entry.lastmod is None or entry.lastmod.year >= 2020

    async def parse(self, response: Response) -> AsyncIterator[Item]:
        yield {"page": text_of(response.css_first("h1"))}

    async def parse_product(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"product": text_of(response.css_first("h1"))}


def shop_spider(*urls: str) -> type[ShopSitemapSpider]:
    class Shop(ShopSitemapSpider):
        name = "shop_sitemap"
        sitemap_urls = urls

    return Shop


async def test_sitemap_spider_follows_robots_index_and_gzipped_sitemaps(db_path: Path) -> None:
    app = sitemap_app()
    async with TestServer(app, host="127.0.0.2") as server:
        spider = shop_spider(str(server.make_url("/robots.txt")))
        stats = await crawl(spider, db=db_path, settings=FAST)
    data = sorted(str(d) for (d,) in rows(db_path, "SELECT data FROM items"))
    assert data == ['{"page":"About"}', '{"product":"One"}', '{"product":"Two"}']
    seen = app[VISITS].paths()
    assert not {"/product/old", "/contact", "/ignored.xml"} & set(seen)
    callbacks = rows(db_path, "SELECT DISTINCT callback FROM requests WHERE url LIKE '%sitemap%'")
    assert callbacks == [("parse_sitemap",)]
    types = dict(rows(db_path, "SELECT url, content_type FROM pages WHERE url LIKE '%sitemap%'"))
    assert sorted(types.values()) == ["application/x-gzip", "application/xml", "text/xml"]
    assert stats["pages"] == 4 + 3  # robots.txt, index, two sitemaps; three pages
    assert stats["requests_failed"] == 0
    assert seen.count("/robots.txt") == 2  # once for the rules, once as the sitemap source


async def test_a_hostile_sitemap_is_recorded_as_an_error(db_path: Path) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        b"<urlset><url><loc>&a;</loc></url></urlset>"
    )

    async def sitemap(request: web.Request) -> web.Response:
        return web.Response(body=bomb, content_type="application/xml")

    app = web.Application()
    app.router.add_get("/sitemap.xml", sitemap)
    async with TestServer(app, host="127.0.0.2") as server:
        await crawl(shop_spider(str(server.make_url("/sitemap.xml"))), db=db_path, settings=FAST)
    kind, callback, message = rows(db_path, "SELECT kind, callback, message FROM errors")[0]
    assert (kind, callback) == ("spider", "parse_sitemap")
    assert "DTD" in str(message)
    assert scalar(db_path, "SELECT count(*) FROM requests") == 1


def test_sitemap_rules_must_name_callbacks_of_the_spider() -> None:
    with pytest.raises(SpiderError, match="parse_missing"):

        class Broken(SitemapSpider):
            name = "broken"
            sitemap_rules = (("", "parse_missing"),)

    with pytest.raises(SpiderError, match="bad regex"):

        class BadRegex(SitemapSpider):
            name = "bad_regex"
            sitemap_follow = ("(",)
