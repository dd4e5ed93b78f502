"""What a reparse stores for a page does not depend on how the pages were cut into chunks or
which process parsed them: the property that lets `--processes N` store what one process
stores. Checked in-process, on generated pages, against `ChunkParser` directly."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import pickle
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler import Request, Response, Spider
from crawler.engine.reparse_chunks import ChunkParser, ParsedChunk
from crawler.engine.reparse_progress import ReparseProgress
from crawler.settings import load_settings
from crawler.store.pages import StoredPage

HREFS = ("/a", "/b", "/a#x", "/c?q=1", "//other.example/d", "mailto:x@y", "/bad-meta", "/stop")


class LinkSpider(Spider):
    """Yields an item per page and a request per link; `/bad-meta` carries meta that cannot
    be stored (an error each time it is admitted), `/stop` stops the reparse."""

    name = "links"
    allowed_domains = ("example.com",)

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        links = [a.attributes.get("href") or "" for a in response.css("a")]
        yield {"url": response.url, "links": len(links)}
        for href in links:
            if href == "/stop":
                from crawler import StopCrawl

                raise StopCrawl("stop link")
            meta = {"bad": object()} if href == "/bad-meta" else None
            yield Request(response.urljoin(href), meta=meta)


def stored(number: int, hrefs: Sequence[str]) -> StoredPage:
    body = "".join(f'<a href="{href}">{href}</a>' for href in hrefs)
    url = f"https://example.com/p/{number}"
    return StoredPage(
        id=number + 1,
        request_id=number + 1,
        crawl_id=1,
        url=url,
        final_url=url,
        status=200,
        content_type="text/html",
        encoding="utf-8",
        blob=gzip.compress(f"<html><body>{body}</body></html>".encode()),
        request_columns=(url, "parse", "GET", None, None, 1),
    )


def page_outputs(chunks: Sequence[ParsedChunk]) -> list[Any]:
    """What the parent stores from the chunks, page by page, and the chunks' counts."""
    pages = [
        (
            crawl_id,
            result.request_id,
            result.items,
            [(e.url, e.kind, e.message) for e in result.errors],
            result.item_keys,
            result.dropped,
        )
        for chunk in chunks
        for crawl_id, result in chunk.results
    ]
    counts = [sum(c.requests for c in chunks), sum(c.not_parsed for c in chunks)]
    stopped = next((c.stopped for c in chunks if c.stopped), None)
    return [pages, counts, stopped]


async def parse_in_chunks(pages: list[StoredPage], cuts: Sequence[int], fresh: bool) -> list[Any]:
    """Parse `pages` cut at `cuts`; each chunk by a new parser (another worker) if `fresh`,
    stopping, as the parent does, after the chunk a callback stopped in."""
    options = load_settings().settings
    bounds = [0, *sorted({c % len(pages) for c in cuts} - {0}), len(pages)]
    parser = ChunkParser(LinkSpider(), options)
    chunks = []
    for start, end in itertools.pairwise(bounds):
        if fresh:
            parser = ChunkParser(LinkSpider(), options)
        chunk = await parser.parse(pages[start:end])
        chunk = pickle.loads(pickle.dumps(chunk))  # as it comes back from a worker
        chunks.append(chunk)
        if chunk.stopped:
            break
    return page_outputs(chunks)


@settings(max_examples=150, deadline=None)
@given(
    links=st.lists(st.lists(st.sampled_from(HREFS), max_size=8), min_size=1, max_size=10),
    cuts=st.lists(st.integers(min_value=1, max_value=9), max_size=4),
    fresh=st.booleans(),
)
def test_chunks_do_not_change_what_is_stored(
    links: list[list[str]], cuts: list[int], fresh: bool
) -> None:
    pages = [stored(number, hrefs) for number, hrefs in enumerate(links)]
    whole = asyncio.run(parse_in_chunks(pages, [], fresh=False))
    assert asyncio.run(parse_in_chunks(pages, cuts, fresh)) == whole


def test_a_request_refused_for_its_meta_is_an_error_on_every_page() -> None:
    pages = [stored(n, ["/a", "/bad-meta", "/a", "/bad-meta"]) for n in range(3)]
    [results, counts, stopped] = asyncio.run(parse_in_chunks(pages, [], fresh=False))
    # Each time: the first /a admitted, the second a repeat; both /bad-meta refused.
    assert [len(errors) for _, _, _, errors, _, _ in results] == [2, 2, 2]
    assert counts == [6, 0] and stopped is None


@pytest.mark.parametrize(
    ("done", "total", "elapsed", "line"),
    [
        (0, 1000, 1.0, "reparse: 0/1,000 pages (0%), 0.0 pages/s, ETA ?"),
        (250, 1000, 2.0, "reparse: 250/1,000 pages (25%), 125.0 pages/s, ETA 6s"),
        (1000, 100_000, 10.0, "reparse: 1,000/100,000 pages (1%), 100.0 pages/s, ETA 16m30s"),
        (10, 1_000_000, 10.0, "reparse: 10/1,000,000 pages (0%), 1.0 pages/s, ETA 277h46m"),
    ],
)
def test_progress_line(done: int, total: int, elapsed: float, line: str) -> None:
    progress = ReparseProgress(total, done, started=0.0)
    assert progress.line(now=elapsed) == line
