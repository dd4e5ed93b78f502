"""Stored pages for reparse tests: a hostile set added to a crawl database, and the spider
(a file, loaded by path as users' spiders are) whose callbacks misbehave on them.

`add_hostile_pages` appends pages a crawl could have stored, or that a damaged file holds:
callbacks that raise after yielding, yield garbage, invalid items, items whose de-duplication
keys repeat across pages (and so across chunks and worker processes), requests with
unstorable meta repeated on many pages, more requests than a spill holds, text that is not
UTF-8; bodies that are truncated, not gzip, empty; error statuses, other content types, a
renamed callback and a request whose stored meta is not JSON. They belong to a second run.
"""

from __future__ import annotations

import gzip
import random
import sqlite3
from pathlib import Path
from typing import Any, Final

__all__ = ["HOSTILE_KINDS", "HOSTILE_SPIDER", "add_hostile_pages", "outcome", "write_spider"]

HOSTILE_SPIDER: Final = """
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from crawler import Request, Response, StopCrawl
from spiders.books import Book, BooksSpider


@dataclass
class Odd:
    n: int
    text: str
    tags: list[str]


class HostileBooks(BooksSpider):
    name = "books"
    allowed_domains = ("127.0.0.1",)
    item_types = (Book, Odd)
    dedupe_items_by = {{"odd": ("text",)}}

    async def parse_book(self, response: Response) -> AsyncIterator[Any]:
        async for book in super().parse_book(response):
            if book.title == {stop_at!r}:
                raise StopCrawl("stopped at " + book.title)
            if {exit_in_worker!r} and os.environ.get("CRAWLER_TEST_EXIT") and book.rating == 3:
                os._exit(3)
            time.sleep({delay!r})
            yield book

    async def hostile(self, response: Response) -> AsyncIterator[Any]:
        kind, n = response.url.rsplit("/", 2)[-2:]
        number = int(n)
        if kind == "raise":
            yield Odd(number, f"raise {{number}}", ["a"])
            raise RuntimeError(f"boom {{number}}")
        elif kind == "garbage":
            yield object()
            yield {{"nan": float("nan")}}
            yield {{"set": {{1, 2}}}}
            yield Odd(number, f"after garbage {{number}}", [])
        elif kind == "invalid":
            yield Odd("not a number", "invalid", [])  # type: ignore[arg-type]
        elif kind == "links":
            for shared in range(5):
                yield Request(response.urljoin(f"/shared/{{shared}}"))
            yield Request(response.urljoin("/bad-meta"), meta={{"x": object()}})
            yield Request("http://[::1")
            yield response.follow_all([f"/batch/{{number % 7}}/{{i}}" for i in range(20)])
        elif kind == "dupe":
            yield Odd(number, "the same text on every page", [])
        elif kind == "dict":
            yield {{"n": number, "title": response.css_first("title").text(), "kind": "dict"}}
        elif kind == "text":
            yield {{"n": number, "text": response.text[:40]}}
        elif kind == "flood":
            for i in range(6000):
                yield Request(response.urljoin(f"/flood/{{number}}/{{i}}"))
        await asyncio.sleep(0)
"""
HOSTILE_KINDS: Final = ("raise", "garbage", "invalid", "links", "dupe", "dict", "text", "flood")
_BROKEN: Final = ("truncated", "not-gzip", "empty", "status-500", "pdf", "renamed", "bad-meta")


def write_spider(
    directory: Path,
    *,
    stop_at: str | None = None,
    delay: float = 0.0,
    exit_in_worker: bool = False,
) -> Path:
    """Write the hostile spider to `directory`; see HOSTILE_SPIDER for the options."""
    path = directory / "hostile_books.py"
    path.write_text(
        HOSTILE_SPIDER.format(stop_at=stop_at, delay=delay, exit_in_worker=exit_in_worker)
    )
    return path


def _body(kind: str, number: int) -> bytes | None:
    html = f"<html><head><title>{kind} {number}</title></head><body><p>{kind}</p></body></html>"
    raw = html.encode()
    if kind == "text":
        raw = raw.replace(b"<p>", b"<p>\xff\xfe caf\xc3\xa9 \x00 \xed\xa0\x80 ")
    if kind == "truncated":
        return gzip.compress(raw)[:-12]
    if kind == "not-gzip":
        return raw
    if kind == "empty":
        return gzip.compress(b"")
    return gzip.compress(raw)


def add_hostile_pages(db: Path, pages: int = 240, seed: int = 5) -> None:
    """Append `pages` hostile pages (kinds in turn, then the broken ones) as a second run."""
    rng = random.Random(seed)
    kinds = [*HOSTILE_KINDS, *_BROKEN]
    with sqlite3.connect(db) as conn:
        base = str(conn.execute("SELECT url FROM requests ORDER BY id LIMIT 1").fetchone()[0])
        root = base.split("/", 3)
        host = root[2]
        prefix = "/".join(root[:3])
        conn.execute(
            "INSERT INTO crawls (id, spider, started_at, finished_at, status, settings, stats) "
            "SELECT 2, spider, started_at, finished_at, status, settings, stats FROM crawls "
            "WHERE id = 1"
        )
        for n in range(pages):
            kind = kinds[n % len(kinds)]
            url = f"{prefix}/h/{kind}/{n}"
            callback = {"renamed": "parse_renamed"}.get(kind, "hostile")
            meta = "{not json" if kind == "bad-meta" else None
            request_id = conn.execute(
                "INSERT INTO requests (url, fingerprint, host, callback, meta, depth, state, "
                "attempts, crawl_id, discovered_at, finished_at) "
                "VALUES (?, ?, ?, ?, ?, 1, 'done', 1, 2, '2026-01-01', '2026-01-01')",
                (url, rng.getrandbits(62), host, callback, meta),
            ).lastrowid
            status = 500 if kind == "status-500" else 200
            content_type = "application/pdf" if kind == "pdf" else "text/html"
            conn.execute(
                "INSERT INTO pages (request_id, crawl_id, url, final_url, status, content_type, "
                "encoding, size_bytes, depth, elapsed_ms, fetched_at, body) "
                "VALUES (?, 2, ?, ?, ?, ?, 'utf-8', 100, 1, 1.0, '2026-01-01', ?)",
                (request_id, url, url, status, content_type, _body(kind, n)),
            )
    conn.close()


def outcome(db: Path) -> dict[str, Any]:
    """Everything a reparse writes, but its timestamps: to compare two reparses."""
    with sqlite3.connect(db) as conn:

        def dump(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql).fetchall()

        found: dict[str, Any] = {
            "items": dump(
                "SELECT id, crawl_id, request_id, page_url, type, data FROM items ORDER BY id"
            ),
            "item_keys": dump("SELECT type, key_hash, key, crawl_id FROM item_keys ORDER BY 1, 2"),
            "errors": dump(
                "SELECT id, crawl_id, request_id, url, kind, message, attempt, callback "
                "FROM errors ORDER BY id"
            ),
            "item_errors": dump(
                "SELECT crawl_id, request_id, url, callback, item_type, field, message, data "
                "FROM item_errors ORDER BY rowid"
            ),
            "schema": dump("SELECT type, name, sql FROM sqlite_master ORDER BY name"),
            "item_tables": dump("SELECT * FROM item_tables ORDER BY name"),
            "crawls": dump("SELECT id, status, stats FROM crawls ORDER BY id"),
        }
        for (name,) in dump("SELECT name FROM item_tables ORDER BY name"):
            columns = [row[1] for row in dump(f'PRAGMA table_info("{name}")')]
            wanted = ", ".join(f'"{c}"' for c in columns if c != "created_at")
            found[f"table {name}"] = dump(f'SELECT {wanted} FROM "{name}" ORDER BY 1')
    conn.close()
    return found
