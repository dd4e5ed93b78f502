"""Our crawler's spider for the benchmark site: one Product per page, follow every link.

compare.py runs it as ``python -m crawler crawl benchmarks/bench_spider.py:BenchSpider
--start-url URL ...``; ``--start-url`` replaces ``start_urls`` and limits the crawl to that host,
so the site's offsite links are dropped by the crawler, not here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from crawler import RequestBatch, Response, Spider, text_of


@dataclass
class Product:
    """The product block every page of the benchmark site carries."""

    title: str
    price: float
    sku: str
    rating: int


class BenchSpider(Spider):
    """Yields the page's product and follows every link on the page (one `follow_all()`)."""

    name = "bench"
    start_urls = ("http://127.0.0.1:8000/index.html",)

    async def parse(self, response: Response) -> AsyncIterator[Product | RequestBatch]:
        """Yield the product (if the page has one) and requests for every link."""
        if (product := response.css_first("div.product")) is not None:
            yield Product(
                title=text_of(product.css_first("h1.title")),
                price=float(text_of(product.css_first("span.price"))),
                sku=text_of(product.css_first("span.sku")),
                rating=int(text_of(product.css_first("span.rating"))),
            )
        yield response.follow_all()
