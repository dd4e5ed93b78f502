"""The comparison's two floors: how fast bare aiohttp fetches the site, and fetches plus parses it.

``fetch`` GETs every URL in the manifest with N workers and does nothing else. ``parse`` crawls
from ``/index.html`` with a set of seen URLs, extracting the product fields and the same-host links
with selectolax and yarl. Each writes a JSON report (and ``parse`` a JSON lines item file). Run by
compare.py in its own process: ``python -m benchmarks.floors fetch|parse --base URL --out DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from selectolax.lexbor import LexborHTMLParser
from yarl import URL

from benchmarks.site import MANIFEST_NAME, Manifest


@dataclass(slots=True)
class Tally:
    """What a floor run did: pages fetched with status 200, failures, bytes and items."""

    pages: int = 0
    errors: int = 0
    bytes: int = 0
    items: list[dict[str, object]] = field(default_factory=list)


def _session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def fetch_all(urls: list[str], concurrency: int) -> Tally:
    """GET every URL with ``concurrency`` workers and read the bodies."""
    tally = Tally()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    for _ in range(concurrency):
        queue.put_nowait(None)

    async def work(session: aiohttp.ClientSession) -> None:
        while (url := await queue.get()) is not None:
            try:
                async with session.get(url) as response:
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                tally.errors += 1
                continue
            if response.status == 200:
                tally.pages += 1
                tally.bytes += len(body)
            else:
                tally.errors += 1

    async with _session(concurrency) as session, asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(work(session))
    return tally


def extract_product(tree: LexborHTMLParser) -> dict[str, object] | None:
    """Return the page's product fields, or None if it has no product block."""
    product = tree.css_first("div.product")
    if product is None:
        return None
    fields = {}
    for name in ("title", "price", "sku", "rating"):
        node = product.css_first(f".{name}")
        fields[name] = "" if node is None else node.text(strip=True)
    return {
        "title": fields["title"],
        "price": float(fields["price"]),
        "sku": fields["sku"],
        "rating": int(fields["rating"]),
    }


def same_host_links(tree: LexborHTMLParser, base: URL) -> Iterator[str]:
    """Yield the absolute, fragment-free URLs of the page's links that stay on ``base``'s host."""
    for node in tree.css("a[href]"):
        href = node.attributes.get("href")
        if not href:
            continue
        try:
            url = base.join(URL(href)).with_fragment(None)
        except ValueError:
            continue
        if url.scheme in ("http", "https") and url.host == base.host and url.port == base.port:
            yield str(url)


async def crawl(start: str, concurrency: int) -> Tally:
    """Crawl from ``start`` following same-host links, extracting products, with N workers."""
    tally = Tally()
    seen = {start}
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    queue.put_nowait(start)

    async def work(session: aiohttp.ClientSession) -> None:
        while (url := await queue.get()) is not None:
            try:
                await visit(session, url)
            finally:
                queue.task_done()

    async def visit(session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url) as response:
                body = await response.read()
                final_url = response.url
        except (aiohttp.ClientError, TimeoutError):
            tally.errors += 1
            return
        if response.status != 200:
            tally.errors += 1
            return
        tally.pages += 1
        tally.bytes += len(body)
        tree = LexborHTMLParser(body)
        if (item := extract_product(tree)) is not None:
            tally.items.append(item)
        for link in same_host_links(tree, final_url):
            if link not in seen:
                seen.add(link)
                queue.put_nowait(link)

    async with _session(concurrency) as session, asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(work(session))
        await queue.join()  # every queued URL visited, and nothing new was found
        for _ in range(concurrency):
            queue.put_nowait(None)
    return tally


def main() -> None:
    """Command line: run one floor and write ``report.json`` (and ``items.jsonl``) to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("floor", choices=("fetch", "parse"))
    parser.add_argument("--base", required=True, help="site root URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--site", type=Path, help="site directory (its manifest lists the URLs)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the report")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    base = args.base.rstrip("/")
    if args.floor == "fetch":
        if args.site is None:
            parser.error("fetch needs --site (for the manifest)")
        manifest = Manifest.load(args.site / MANIFEST_NAME)
        urls = [f"{base}/{page.path}" for page in manifest.pages]
        tally = asyncio.run(fetch_all(urls, args.concurrency))
    else:
        tally = asyncio.run(crawl(f"{base}/index.html", args.concurrency))
        with (args.out / "items.jsonl").open("w", encoding="utf-8") as items:
            items.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in tally.items)
    report = {"pages": tally.pages, "errors": tally.errors, "bytes": tally.bytes}
    (args.out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
