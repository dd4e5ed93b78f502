"""Link rules: Rule matching, CrawlSpider following allow/deny/domains/restrict_css, rule
callbacks with and without follow, and links no rule matches recorded as skipped `rule`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from crawler import CrawlSpider, Response, Rule, SpiderError, crawl, text_of
from crawler.cli.common import with_start_urls
from tests.conftest import rows
from tests.polite_sites import VISITS, page_site


def test_a_rule_matches_allow_deny_and_domains() -> None:
    rule = Rule(
        allow=(r"/item/\d+", r"/special"),
        deny=(r"\?sort=",),
        allow_domains=("shop.test",),
        deny_domains=("old.shop.test",),
    )
    assert rule.matches("http://shop.test/item/1")
    assert rule.matches("http://www.shop.test/special")
    assert not rule.matches("http://shop.test/item/1?sort=price")
    assert not rule.matches("http://shop.test/about")
    assert not rule.matches("http://old.shop.test/item/1")
    assert not rule.matches("http://othershop.test/item/1")
    assert Rule().matches("mailto:someone@example.com")


def test_follow_defaults_to_true_only_without_a_callback() -> None:
    assert Rule().follows
    assert not Rule(callback="parse_item").follows
    assert Rule(callback="parse_item", follow=True).follows
    assert not Rule(follow=False).follows


def test_mistakes_in_rules_fail_when_the_spider_is_defined() -> None:
    with pytest.raises(SpiderError, match="tuple of strings"):
        Rule(allow=r"/item/")  # a str is a Sequence[str]: only the runtime check catches it
    with pytest.raises(SpiderError, match="bad regex"):
        Rule(deny=("[",))
    with pytest.raises(SpiderError, match="parse_missing"):

        class Broken(CrawlSpider):
            name = "broken"
            rules = (Rule(callback="parse_missing"),)


NAV = "<nav><a href='/category/1'>1</a><a href='/category/2'>2</a></nav>"
SHOP = {
    "/": NAV
    + "<main><a href='/item/1'>item</a><a href='/item/2?sort=price'>sorted</a>"
    + "<a href='/cart'>cart</a><a href='http://elsewhere.test/x'>away</a></main>"
    + "<footer><a href='/category/3'>3</a><a href='/about'>about</a></footer>",
    "/category/1": NAV + "<h1>Category 1</h1><a href='/item/11'>11</a>"
    "<div class='pagination'><a href='/category/1/page/2'>next</a></div>",
    "/category/2": NAV + "<h1>Category 2</h1><a href='/item/21'>21</a><a href='/item/1'>1</a>",
    "/category/1/page/2": "<h1>Category 1, page 2</h1><a href='/item/12'>12</a>",
    "/category/3": "<h1>Category 3</h1>",
    "/item/1": "<h1>Item 1</h1>" + NAV + "<a href='/category/4'>4</a>",
    "/item/11": "<h1>Item 11</h1>",
    "/item/12": "<h1>Item 12</h1>",
    "/item/21": "<h1>Item 21</h1>",
}


class ShopSpider(CrawlSpider):
    name = "shop"
    rules = (
        Rule(allow=(r"/item/\d+$",), callback="parse_item"),
        Rule(
            allow=(r"/category/\d+",),
            restrict_css=("nav", ".pagination"),
            callback="parse_category",
            follow=True,
        ),
    )

    async def parse_start_url(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"start": response.url.endswith("/")}

    async def parse_item(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"item": text_of(response.css_first("h1"))}

    async def parse_category(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"category": text_of(response.css_first("h1"))}


async def test_crawl_spider_follows_its_rules_and_records_what_they_refuse(
    db_path: Path,
) -> None:
    app = page_site(SHOP)
    async with TestServer(app, host="127.0.0.2") as server:
        spider = with_start_urls(ShopSpider, [str(server.make_url("/"))])
        stats = await crawl(spider, db=db_path, settings={"progress_interval": 60.0})
        base = str(server.make_url("/")).rstrip("/")
    items = sorted(str(data) for (data,) in rows(db_path, "SELECT data FROM items"))
    assert items == [
        '{"category":"Category 1"}',
        '{"category":"Category 1, page 2"}',
        '{"category":"Category 2"}',
        '{"item":"Item 1"}',
        '{"item":"Item 11"}',
        '{"item":"Item 12"}',
        '{"item":"Item 21"}',
        '{"start":true}',
    ]
    seen = set(app[VISITS].paths())
    assert "/category/3" not in seen  # matches a rule, but only outside its regions
    assert "/category/4" not in seen  # on an item page: the item rule does not follow
    refused = {
        str(url).removeprefix(base)
        for (url,) in rows(db_path, "SELECT url FROM requests WHERE reason = 'rule'")
    }
    assert refused == {"/item/2?sort=price", "/cart", "http://elsewhere.test/x", "/about"}
    assert stats["skipped"]["rule"] == 4
    callbacks = dict(rows(db_path, "SELECT url, callback FROM requests WHERE state = 'done'"))
    assert callbacks[f"{base}/"] == "parse"
    assert callbacks[f"{base}/item/11"] == "parse_by_rule"
