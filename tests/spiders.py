"""Spiders the tests crawl with (Scrapy's tests/spiders.py idea): one behaviour each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from crawler import Request, Response, Spider, StopCrawl, text_of


@dataclass
class PageItem:
    """The title and number of a test page."""

    title: str
    number: int


class FollowAllSpider(Spider):
    """Follows every link and yields one PageItem per page that has a `p.n` number."""

    name = "follow_all"

    async def parse(self, response: Response) -> AsyncIterator[PageItem | Request]:
        number = text_of(response.css_first("p.n"))
        if number:
            yield PageItem(title=text_of(response.css_first("title")), number=int(number))
        for url in response.links():
            yield response.follow(url)


class KeyedFollowAllSpider(FollowAllSpider):
    """FollowAllSpider that de-duplicates its items by page number (it keeps item keys)."""

    name = "follow_all"  # the same crawl: it may reparse FollowAllSpider's
    dedupe_items_by = ("number",)


class RaisingSpider(Spider):
    """Follows links, yields an item, then raises on every page whose number is a multiple of 5."""

    name = "raising"

    async def parse(self, response: Response) -> AsyncIterator[dict[str, Any] | Request]:
        for url in response.links():
            yield response.follow(url)
        number = text_of(response.css_first("p.n"))
        if number:
            yield {"number": int(number)}
            if int(number) % 5 == 0:
                raise ValueError(f"cannot handle page {number}")


class GarbageSpider(Spider):
    """Yields things that are neither items nor requests, and an item JSON cannot hold."""

    name = "garbage"

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        yield 42
        yield {"fine": True}
        yield {"bad": object()}
        yield Request(response.urljoin("/p/1"), callback="no_such_method")
        yield Request(response.urljoin("/p/2"), meta={"unstorable": object()})


class StoppingSpider(Spider):
    """Raises StopCrawl on the fifth page it sees."""

    name = "stopping"
    seen = 0

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        self.seen += 1
        if self.seen == 5:
            raise StopCrawl("enough pages")
        for url in response.links():
            yield response.follow(url)


class BurstSpider(Spider):
    """Follows every link and yields 20 items per page, so writes come in bursts."""

    name = "burst"

    async def parse(self, response: Response) -> AsyncIterator[dict[str, Any] | Request]:
        number = text_of(response.css_first("p.n"))
        for index in range(20):
            yield {"page": number, "index": index}
        for url in response.links():
            yield response.follow(url)
