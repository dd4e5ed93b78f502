"""Parsing one chunk of stored pages for `crawler reparse`: decompress each body, run the
page's callback as a crawl would, and keep what is to be stored.

The same `ChunkParser` runs in the reparse's own process (`--processes 1`) and in each worker
process (`--processes N`), one per process, and what the parent stores for a page depends on
that page alone, not on which process parsed it or which pages that process parsed before:
the one state the parser carries across pages, the frontier's cache of URLs just seen, only
decides whether a request is counted as new or as a repeat (both are counted the same), and
a request refused as an error (unknown callback, meta or headers that cannot be stored) is
refused again each time, the cache never holding it (tests/test_reparse_chunks.py checks
this on generated pages). So the cache is emptied before each chunk: a reparse's memory then
does not grow with the links of the pages it has parsed (up to the cache's bound, some 40 MB).
What does cross pages is the spider instance itself and its `process_item`: a spider that
keeps state between pages gets one state per process.

A `ParsedChunk` is what travels back to the parent: the pages' `PageResult`s without the
requests they yielded (counted, never crawled) and the counts of the chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import final

from crawler.engine.callbacks import CallbackRunner
from crawler.frontier.gate import Frontier
from crawler.records import Candidate, PageResult, RequestState, Skipped
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.stats import Stats
from crawler.store.columns import ColumnKind, item_fields
from crawler.store.pages import DamagedBody, StoredPage

ItemFields = tuple[tuple[str, ColumnKind], ...]

__all__ = ["ChunkParser", "ItemFields", "ParsedChunk"]


@final
@dataclass(slots=True, kw_only=True)
class ParsedChunk:
    """What the callbacks made of one chunk of stored pages, in page order."""

    results: list[tuple[int, PageResult]] = field(default_factory=list)
    """(crawl id, what the page's callback produced) for each page parsed."""
    read: int = 0
    """Pages read, parsed or not."""
    not_parsed: int = 0
    """Pages a crawl would not parse (error status, other content type, damaged body)."""
    requests: int = 0
    """Requests the callbacks yielded (counted, not crawled)."""
    stopped: str | None = None
    """Why a callback raised `StopCrawl`, if one did: the chunk ends with that page."""
    tables: dict[tuple[str, ItemFields], None] = field(default_factory=dict)
    """The typed tables the chunk's dataclass items need: (type name, fields), in order.
    Sent instead of the classes, which another process cannot always import by name."""


@final
class ChunkParser:
    """Runs a spider's callbacks over chunks of stored pages, one page after another."""

    def __init__(self, spider: Spider, settings: Settings) -> None:
        self._stats = Stats()
        self._frontier = Frontier(settings, spider, list(spider.allowed_domains))
        self._runner = CallbackRunner(spider, self._frontier, self._stats, on_stop=self._stop)
        self._parse_types = frozenset(settings.parse_content_types)
        self._stopped: str | None = None
        self._fields: dict[type, ItemFields] = {}

    def _stop(self, reason: str) -> None:
        self._stopped = self._stopped or reason

    async def parse(self, pages: Sequence[StoredPage]) -> ParsedChunk:
        """Parse `pages` in order; after a callback stops the reparse, parse nothing more."""
        chunk = ParsedChunk(stopped=self._stopped)
        if chunk.stopped is not None:
            return chunk
        self._frontier.forget_recent()  # bounded by a chunk's links, not the file's
        duplicates = self._stats.skipped["duplicate"]
        for page in pages:
            chunk.read += 1
            result = await self._parse_page(page, chunk)
            if result is None:
                chunk.not_parsed += 1
                continue
            chunk.results.append((page.crawl_id, result))
            for cls, type_name in result.item_classes.items():
                if (fields := self._fields.get(cls)) is None:
                    fields = self._fields[cls] = item_fields(cls)
                chunk.tables[type_name, fields] = None
            result.item_classes = {}
            if self._stopped is not None:
                chunk.stopped = self._stopped
                break
        chunk.requests += self._stats.skipped["duplicate"] - duplicates
        return chunk

    async def _parse_page(self, page: StoredPage, chunk: ParsedChunk) -> PageResult | None:
        """Run the page's callback; None when a crawl would not have parsed it."""
        if page.status >= 300 or page.content_type not in self._parse_types:
            return None
        try:
            body = page.body()
        except DamagedBody:
            return None  # a damaged body: nothing to parse
        if body is None:
            return None

        async def count(candidates: list[Candidate], skipped: list[Skipped]) -> None:
            chunk.requests += len(candidates) + len(skipped)

        try:
            response = page.response(body)
        except ValueError:  # its request's stored headers or meta are not JSON
            return None
        result = PageResult(
            request_id=page.request_id, url=response.request.url, state=RequestState.DONE
        )
        await self._runner.run(response, result, links=False, spill=count)
        await count(result.candidates, result.skipped)
        result.candidates, result.skipped = [], []  # counted; the parent stores none
        return result
