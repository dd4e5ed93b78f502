"""Every URL gets its due across resumes: budget skips keep their request, depth is the least
depth found, callback generators are closed when their request ends, reparse is atomic.

Each test here failed before the behaviour it names was built.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler import Request, Response, Spider, StopCrawl, crawl
from crawler.cli.common import with_start_urls
from crawler.demo import catalogue_app
from spiders.books import BooksSpider
from tests.conftest import rows, scalar
from tests.invariants import assert_all_accounted_for
from tests.sites import html_page

QUIET: dict[str, object] = {"progress_interval": 60.0}


def books_of(db: Path) -> list[dict[str, Any]]:
    """Every stored book, field by field, in a stable order."""
    found = [json.loads(data) for (data,) in rows(db, "SELECT data FROM items")]
    return sorted(found, key=lambda item: json.dumps(item, sort_keys=True))


async def test_a_resume_after_max_pages_gives_the_items_of_a_one_shot_crawl(
    tmp_path: Path,
) -> None:
    async with TestServer(catalogue_app(), host="127.0.0.1") as server:
        spider = with_start_urls(BooksSpider, [str(server.make_url("/"))])
        await crawl(spider, db=tmp_path / "one.db", settings=QUIET)
        limited = tmp_path / "limited.db"
        first = await crawl(spider, db=limited, settings={**QUIET, "max_pages": 50})
        assert first["pages"] == 50
        assert first["skipped"]["max_pages"] > 0
        # what the budget refused is stored whole: callback and priority included
        refused = rows(limited, "SELECT DISTINCT callback FROM requests WHERE reason = 'max_pages'")
        assert {c for (c,) in refused} >= {"parse_book"}
        await crawl(spider, db=limited, settings=QUIET)
        third = await crawl(spider, db=limited, settings=QUIET)
    one_shot = books_of(tmp_path / "one.db")
    assert len(one_shot) == 300
    assert books_of(limited) == one_shot
    assert third["pages"] == 0
    assert scalar(limited, "SELECT count(*) FROM requests WHERE state = 'pending'") == 0


def race_app(slow: float) -> web.Application:
    """`/` links to `/fast/1` and `/slow`; the fast chain reaches `/target` at depth 4 while
    `/slow` (depth 1) links to it directly, answering only after `slow` seconds."""

    async def page(request: web.Request) -> web.Response:
        path = request.path
        links: list[str] = []
        if path == "/":
            links = ["/fast/1", "/slow"]
        elif path.startswith("/fast/"):
            n = int(path.rsplit("/", 1)[1])
            links = [f"/fast/{n + 1}"] if n < 3 else ["/target"]
        elif path == "/slow":
            await asyncio.sleep(slow)
            links = ["/target"]
        elif path == "/target":
            links = ["/beyond"]
        body = "".join(f'<a href="{link}">{link}</a>' for link in links)
        return web.Response(text=html_page(body), content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


class FollowSpider(Spider):
    """Follows every link with response.follow (depth + 1)."""

    name = "follow"

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        for url in response.links():
            yield response.follow(url)


async def test_a_url_refused_for_depth_is_crawled_when_a_shallower_path_reaches_it(
    db_path: Path,
) -> None:
    async with TestServer(race_app(slow=0.5), host="127.0.0.1") as server:
        spider = with_start_urls(FollowSpider, [str(server.make_url("/"))])
        stats = await crawl(spider, db=db_path, settings={**QUIET, "max_depth": 3})
    fates = {
        url.split("/", 3)[3]: (state, reason, depth)
        for url, state, reason, depth in rows(
            db_path, "SELECT url, state, reason, depth FROM requests"
        )
    }
    assert fates["target"] == ("done", None, 2)  # first refused at depth 4, then reached at 2
    assert fates["beyond"] == ("done", None, 3)
    assert fates["fast/3"] == ("done", None, 3)
    assert stats["pages"] == 7
    assert_all_accounted_for(db_path)


async def test_a_plain_request_from_a_callback_is_one_below_its_page(db_path: Path) -> None:
    class PlainSpider(Spider):
        name = "plain"

        async def parse(self, response: Response) -> AsyncIterator[Request]:
            for url in response.links():
                yield Request(response.urljoin(url))

    async with TestServer(race_app(slow=0), host="127.0.0.1") as server:
        spider = with_start_urls(PlainSpider, [str(server.make_url("/"))])
        await crawl(spider, db=db_path, settings={**QUIET, "max_depth": 2})
    depths = dict(rows(db_path, "SELECT url, depth FROM requests WHERE state = 'done'"))
    assert sorted(depths.values()) == [0, 1, 1, 2, 2]  # /, /fast/1, /slow, /fast/2, /target


async def test_a_callback_generator_is_closed_when_its_request_ends(db_path: Path) -> None:
    closed_in: list[str] = []

    class ClosingSpider(Spider):
        name = "closing"

        async def parse(self, response: Response) -> AsyncIterator[dict[str, int]]:
            try:
                yield {"n": 1}
                yield {"n": 2}
            finally:
                task = asyncio.current_task()
                closed_in.append(task.get_name() if task else "")

        async def process_item(self, item: dict[str, int], response: Response) -> dict[str, int]:
            raise StopCrawl("enough")

    async with TestServer(race_app(slow=0), host="127.0.0.1") as server:
        spider = with_start_urls(ClosingSpider, [str(server.make_url("/"))])
        stats = await crawl(spider, db=db_path, settings=QUIET)
    assert stats["pages"] == 1
    # closed by the worker that ran it, as its request ended: not later by the collector
    assert len(closed_in) == 1 and closed_in[0].startswith("worker-")


async def test_reparse_stopped_midway_leaves_items_and_keys_as_they_were(
    tmp_path: Path,
) -> None:
    from crawler.engine.reparse import reparse
    from crawler.settings import load_settings

    db = tmp_path / "books.db"
    async with TestServer(catalogue_app(), host="127.0.0.1") as server:
        spider = with_start_urls(BooksSpider, [str(server.make_url("/"))])
        await crawl(spider, db=db, settings={**QUIET, "store_body": True})
    before = books_of(db)
    keys_before = scalar(db, "SELECT count(*) FROM item_keys")
    assert before

    class StoppingBooks(BooksSpider):
        name = "books"
        seen = 0

        async def parse_book(self, response: Response) -> AsyncIterator[Any]:
            StoppingBooks.seen += 1
            if StoppingBooks.seen > 250:  # pages come in batches of 100: past the first ones
                raise StopCrawl("changed my mind")
            async for output in super().parse_book(response):
                yield output

    settings = load_settings(overrides={"progress_interval": 60.0}).settings
    summary = await reparse(StoppingBooks(), db, settings)
    assert summary.stopped == "changed my mind (nothing was changed)"
    assert books_of(db) == before
    assert scalar(db, "SELECT count(*) FROM item_keys") == keys_before
    assert scalar(db, "PRAGMA integrity_check") == "ok"


def shop_app(links: dict[str, list[str]], hits: dict[str, int]) -> web.Application:
    """Pages linking as `links` says; `/shop` redirects to `/shop/`, which is also a page."""

    async def page(request: web.Request) -> web.Response:
        hits[request.path] = hits.get(request.path, 0) + 1
        if request.path == "/shop":
            raise web.HTTPMovedPermanently("/shop/")
        body = "".join(f'<a href="{link}">{link}</a>' for link in links.get(request.path, []))
        return web.Response(text=html_page(body), content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


async def test_a_redirect_target_is_fetched_once_whichever_comes_first(tmp_path: Path) -> None:
    followed_first = {"/": ["/shop", "/later"], "/later": ["/shop/"]}
    known_first = {"/": ["/shop/", "/shop"]}
    for name, links in (("followed", followed_first), ("known", known_first)):
        hits: dict[str, int] = {}
        db = tmp_path / f"{name}.db"
        async with TestServer(shop_app(links, hits), host="127.0.0.1") as server:
            spider = with_start_urls(FollowSpider, [str(server.make_url("/"))])
            await crawl(spider, db=db, settings={**QUIET, "concurrency": 1})
            shop, shop_link = str(server.make_url("/shop/")), str(server.make_url("/shop"))
        assert hits["/shop/"] == 1, name
        assert scalar(db, "SELECT count(*) FROM pages WHERE final_url = ?", (shop,)) == 1
        fates = dict(rows(db, "SELECT url, coalesce(reason, state) FROM requests"))
        assert fates[shop_link] == "done"
        if name == "followed":  # the target is recorded as fetched through the redirect
            assert fates[shop] == "redirect_target"
        else:  # known already: the redirect ends the hop, its 301 is the page
            assert fates[shop] == "done"
            statuses = rows(db, "SELECT status FROM pages WHERE url = ?", (shop_link,))
            assert statuses == [(301,)]
        assert_all_accounted_for(db)
