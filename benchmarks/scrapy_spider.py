"""Scrapy on the benchmark site: follow every same-host link, yield one product per page.

Runs in its own virtualenv (``benchmarks/.venvs/scrapy``), started by compare.py as
``scrapy runspider benchmarks/scrapy_spider.py -a start_url=URL -a report=FILE -O items.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import scrapy
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor
from scrapy.settings import BaseSettings

SETTINGS: Final = {
    "CONCURRENT_REQUESTS": 64,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 64,
    "DOWNLOAD_DELAY": 0,
    "ROBOTSTXT_OBEY": False,
    "AUTOTHROTTLE_ENABLED": False,
    "LOG_LEVEL": "INFO",
}
"""Settings for a like-for-like run; compare.py passes -s CONCURRENT_REQUESTS* for --concurrency."""


def _number(text: str | None, kind: type[float] | type[int]) -> float | int | None:
    return None if text is None else kind(text)


class BenchSpider(scrapy.Spider):
    """Follows every internal link (LinkExtractor limited to the start URL's host)."""

    name = "bench"

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        """Apply the benchmark's settings at spider priority (above the defaults)."""
        super().update_settings(settings)
        settings.setdict(SETTINGS, priority="spider")

    def __init__(self, start_url: str, report: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parts = urlsplit(start_url)
        self.start_urls = [start_url]
        self.allowed_domains = [parts.hostname or ""]
        # LinkExtractor compares allow_domains with the netloc, port included.
        self.links = LinkExtractor(allow_domains=[parts.netloc])
        self.report = report

    async def start(self) -> AsyncIterator[scrapy.Request]:
        """Yield the start request without Scrapy's default ``dont_filter=True``.

        Otherwise the start URL is not in the duplicate filter and ``/index.html`` is fetched a
        second time when a page links to it.
        """
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[dict[str, Any] | scrapy.Request]:
        """Yield the page's product and a request for each same-host link."""
        if not isinstance(response, TextResponse):  # not HTML: nothing to extract
            return
        product = response.css("div.product")
        yield {
            "title": product.css("h1.title::text").get(),
            "price": _number(product.css("span.price::text").get(), float),
            "sku": product.css("span.sku::text").get(),
            "rating": _number(product.css("span.rating::text").get(), int),
        }
        for link in self.links.extract_links(response):
            yield response.follow(link, callback=self.parse)

    def closed(self, reason: str) -> None:
        """Write the crawl's page and error counts for compare.py."""
        if not self.report:
            return
        stats = self.crawler.stats.get_stats()
        report = {
            "pages": stats.get("response_received_count", 0),
            "errors": stats.get("log_count/ERROR", 0),
            "reason": reason,
        }
        Path(self.report).write_text(json.dumps(report))
