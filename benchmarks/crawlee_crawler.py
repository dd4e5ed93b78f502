"""Crawlee for Python on the benchmark site: follow same-host links, push one product per page.

Runs in its own virtualenv (``benchmarks/.venvs/crawlee``), started by compare.py as
``python benchmarks/crawlee_crawler.py --start-url URL --out DIR --concurrency 64`` from a fresh
working directory, so Crawlee's default file-system storage lands there. At the end the dataset
is exported to ``DIR/items.jsonl`` and the run's statistics to ``DIR/report.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from crawlee import ConcurrencySettings
from crawlee.crawlers import BasicCrawler


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def parsel_crawler(settings: ConcurrencySettings) -> BasicCrawler[Any, Any]:
    """Return a ParselCrawler that pushes each page's product and enqueues same-host links."""
    from crawlee.crawlers import ParselCrawler, ParselCrawlingContext  # needs crawlee[parsel]

    crawler = ParselCrawler(concurrency_settings=settings, max_requests_per_crawl=None)

    @crawler.router.default_handler
    async def handle(context: ParselCrawlingContext) -> None:
        product = context.selector.css("div.product")
        await context.push_data(
            {
                "title": product.css("h1.title::text").get(),
                "price": _float(product.css("span.price::text").get()),
                "sku": product.css("span.sku::text").get(),
                "rating": _int(product.css("span.rating::text").get()),
            }
        )
        await context.enqueue_links(strategy="same-hostname")

    return crawler


def soup_crawler(settings: ConcurrencySettings) -> BasicCrawler[Any, Any]:
    """Return the BeautifulSoupCrawler equivalent of :func:`parsel_crawler`."""
    from crawlee.crawlers import BeautifulSoupCrawler, BeautifulSoupCrawlingContext

    crawler = BeautifulSoupCrawler(concurrency_settings=settings, max_requests_per_crawl=None)

    @crawler.router.default_handler
    async def handle(context: BeautifulSoupCrawlingContext) -> None:
        def text(selector: str) -> str | None:
            node = context.soup.select_one(selector)
            return None if node is None else node.get_text(strip=True)

        await context.push_data(
            {
                "title": text("div.product h1.title"),
                "price": _float(text("div.product span.price")),
                "sku": text("div.product span.sku"),
                "rating": _int(text("div.product span.rating")),
            }
        )
        await context.enqueue_links(strategy="same-hostname")

    return crawler


def build_crawler(concurrency: int) -> tuple[BasicCrawler[Any, Any], str]:
    """Return a crawler with fixed ``concurrency`` and the name of its parser.

    ParselCrawler when ``crawlee[parsel]`` is installed, else BeautifulSoupCrawler.
    """
    settings = ConcurrencySettings(
        min_concurrency=concurrency, desired_concurrency=concurrency, max_concurrency=concurrency
    )
    try:
        return parsel_crawler(settings), "parsel"
    except ImportError:
        return soup_crawler(settings), "beautifulsoup"


async def run(start_url: str, out: Path, concurrency: int) -> None:
    """Crawl from ``start_url``, then write ``items.jsonl`` and ``report.json`` into ``out``."""
    crawler, parser = build_crawler(concurrency)
    stats = await crawler.run([start_url])
    export_started = time.perf_counter()
    dataset = await crawler.get_dataset()
    with (out / "items.jsonl").open("w", encoding="utf-8") as items:
        async for item in dataset.iterate_items():
            items.write(json.dumps(item, ensure_ascii=False) + "\n")
    report = {
        "pages": stats.requests_finished,
        "errors": stats.requests_failed,
        "parser": parser,
        "export_seconds": round(time.perf_counter() - export_started, 3),
    }
    (out / "report.json").write_text(json.dumps(report))


def main() -> None:
    """Command line: crawl the benchmark site with Crawlee."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-url", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(run(args.start_url, args.out, args.concurrency))


if __name__ == "__main__":
    main()
