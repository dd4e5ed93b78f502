"""response.follow_all(): many links as one RequestBatch, admitted like single requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import BaseTestServer

from crawler import Request, RequestBatch, Response, Spider, crawl, text_of
from crawler.cli.common import with_start_urls
from crawler.engine.callbacks import SPILL_AT
from tests.conftest import rows, scalar
from tests.invariants import assert_crawl_invariant
from tests.spiders import FollowAllSpider, PageItem

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


def make_response(body: bytes, url: str = "http://s.test/a/b") -> Response:
    return Response(
        url=url,
        status=200,
        headers={"Content-Type": "text/html"},
        body=body,
        request=Request(url, depth=2),
    )


class BatchSpider(Spider):
    """FollowAllSpider's behaviour with one follow_all() per page."""

    name = "batch"

    async def parse(self, response: Response) -> AsyncIterator[PageItem | RequestBatch]:
        number = text_of(response.css_first("p.n"))
        if number:
            yield PageItem(title=text_of(response.css_first("title")), number=int(number))
        yield response.follow_all()


class WrongBatchesSpider(Spider):
    """Yields a batch naming a callback that does not exist, then one with unstorable meta,
    then a good one."""

    name = "wrong_batches"

    async def parse(self, response: Response) -> AsyncIterator[RequestBatch]:
        yield response.follow_all(callback="no_such_method")
        yield response.follow_all(meta={"unstorable": object()})
        if response.depth == 0:
            yield response.follow_all(["/p/1", "/p/2"], callback=self.leaf)

    async def leaf(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"leaf": response.url}


class HugeBatchSpider(Spider):
    """Yields one batch of more than SPILL_AT URLs from its start page."""

    name = "huge_batch"
    count = 2 * SPILL_AT + 123

    async def parse(self, response: Response) -> AsyncIterator[RequestBatch]:
        yield response.follow_all([f"/p/{n}" for n in range(self.count)], callback=self.leaf)

    async def leaf(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"leaf": response.url}


def test_follow_all_follows_the_page_links_or_the_given_targets() -> None:
    response = make_response(
        b'<a href="../c#f">c</a><a href="/d">d</a><a href="../c">again</a><a class="x" href="e">'
    )
    everything = response.follow_all()
    assert list(everything.urls) == response.links()
    assert response.links() == ["http://s.test/c", "http://s.test/d", "http://s.test/a/e"]
    spider = FollowAllSpider()
    chosen = response.follow_all(
        [*response.css("a.x"), "/d?q=1", "http://other.test/"],
        callback=spider.parse,
        meta={"from": "batch"},
        priority=3,
        headers={"X-Test": "1"},
    )
    assert list(chosen.urls) == ["http://s.test/a/e", "http://s.test/d?q=1", "http://other.test/"]
    requests = list(chosen)
    assert [r.url for r in requests] == list(chosen.urls)
    assert {(r.callback, r.depth, r.priority, r.method) for r in requests} == {
        ("parse", 3, 3, "GET")
    }
    assert all(r.meta == {"from": "batch"} and r.headers == {"X-Test": "1"} for r in requests)
    requests[0].meta["changed"] = True  # each request has its own meta
    assert requests[1].meta == {"from": "batch"} and chosen.meta == {"from": "batch"}
    assert len(chosen) == 3
    assert response.follow_all([" http://[::1 "]).urls == ["http://[::1"]  # invalid: as written


async def test_a_batch_crawls_exactly_what_single_requests_crawl(
    follow_site: BaseTestServer, tmp_path: Path
) -> None:
    start = str(follow_site.make_url("/p/0"))
    results = {}
    for spider in (FollowAllSpider, BatchSpider):
        db = tmp_path / f"{spider.name}.db"
        stats = await crawl(with_start_urls(spider, [start]), db=db, settings=FAST)
        assert_crawl_invariant(db)
        query = "SELECT url, state, coalesce(reason, ''), depth FROM requests ORDER BY url"
        results[spider.name] = (rows(db, query), stats["skipped"], stats["items"])
    assert results["batch"] == results["follow_all"]
    requests, skipped, items = results["batch"]
    assert items == 60
    assert skipped["duplicate"] > 100  # refused from the recent-URL set, without a Request
    assert ("http://offsite.invalid/x", "skipped", "offsite", 1) in [
        (url, state, reason, depth) for url, state, reason, depth in requests
    ]


async def test_a_wrong_batch_is_one_error_and_the_crawl_goes_on(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(WrongBatchesSpider, [str(follow_site.make_url("/p/0"))])
    stats = await crawl(spider, db=db_path, settings=FAST)
    errors = rows(db_path, "SELECT kind, message FROM errors ORDER BY id")
    assert [kind for kind, _ in errors] == ["spider", "spider"]  # /p/0's two wrong batches
    messages = [str(message) for _, message in errors]
    assert "no_such_method" in messages[0]
    assert "follow_all" in messages[1] and "meta is not JSON-serialisable" in messages[1]
    assert stats["pages"] == 3
    assert scalar(db_path, "SELECT count(*) FROM items") == 2


async def test_a_batch_larger_than_the_spill_size_records_every_url(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(HugeBatchSpider, [str(follow_site.make_url("/"))])
    settings = {**FAST, "max_pages": 20, "store_links": False}
    stats = await crawl(spider, db=db_path, settings=settings)
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE url LIKE '%/p/%'") == (
        HugeBatchSpider.count
    )
    assert stats["pages"] == 20
    states = dict(
        rows(db_path, "SELECT coalesce(reason, state), count(*) FROM requests GROUP BY 1")
    )
    assert states == {"done": 20, "max_pages": HugeBatchSpider.count + 1 - 20}
    crawl_stats = json.loads(str(scalar(db_path, "SELECT stats FROM crawls")))
    assert crawl_stats["skipped"]["max_pages"] == HugeBatchSpider.count + 1 - 20
