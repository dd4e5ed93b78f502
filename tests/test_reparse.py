"""`crawler reparse`: callbacks re-run over stored bodies, offline, replacing their items."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.demo import expected_books
from tests.conftest import RunCli, Target, rows, scalar
from tests.results_site import BOOKS, copy_database, crawl_books_once
from tests.spiders import FollowAllSpider

UPPER_SPIDER = '''
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from crawler import Response
from spiders.books import Book as BaseBook, BooksSpider


@dataclass
class Book(BaseBook):
    title_length: int = 0


class UpperBooksSpider(BooksSpider):
    """The books spider with a "fixed" selector: titles upper-cased, and a new field."""

    name = "books"
    item_types = (Book,)
    dedupe_items_by = {dedupe!r}

    async def parse_book(self, response: Response) -> AsyncIterator[Book]:
        async for book in super().parse_book(response):
            for _ in range({copies}):
                changes = {{"title": book.title.upper(), "title_length": len(book.title)}}
                yield Book(**{{**vars(book), **changes}})
'''


def upper_spider(directory: Path, *, dedupe: tuple[str, ...] = (), copies: int = 1) -> Path:
    path = directory / "upper_books.py"
    path.write_text(UPPER_SPIDER.format(dedupe=dedupe, copies=copies))
    return path


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crawl_books_once(tmp_path_factory.mktemp("crawled") / "books.db")


@pytest.fixture
def books_db(crawled: Path, db_path: Path) -> Path:
    return copy_database(crawled, db_path)


def snapshot(db: Path) -> dict[str, Any]:
    """What a reparse must leave alone."""
    return {
        "pages": rows(db, "SELECT id, url, status, body FROM pages ORDER BY id"),
        "requests": rows(db, "SELECT * FROM requests ORDER BY id"),
        "links": scalar(db, "SELECT count(*) FROM links"),
        "fetch_errors": rows(
            db, "SELECT url, kind FROM errors WHERE kind NOT IN ('spider', 'item')"
        ),
    }


async def reparse(run_cli: RunCli, spider: Path | str, db: Path) -> dict[str, Any]:
    result = await run_cli("reparse", str(spider), str(db), "--format", "json")
    assert result.code == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


async def test_reparse_replaces_items_with_what_the_changed_callback_yields(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    before = snapshot(books_db)
    assert scalar(books_db, "SELECT count(*) FROM book WHERE title = upper(title)") == 0
    spider = upper_spider(tmp_path)
    for _ in range(2):  # a second reparse replaces the first one's output, adding nothing
        summary = await reparse(run_cli, spider, books_db)
        assert summary["items_by_type"] == {"book": BOOKS}
        assert summary["errors"] == {"spider": 1}  # the product page without a price
        assert summary["requests_not_crawled"] > 0
        assert summary["pages"] == scalar(books_db, "SELECT count(*) FROM pages WHERE status = 200")
        assert summary["not_parsed"] == 1  # the 404 page
    want = sorted((str(b["title"]).upper(), len(str(b["title"]))) for b in expected_books(BOOKS))
    assert rows(books_db, "SELECT title, title_length FROM book ORDER BY title") == want
    assert scalar(books_db, "SELECT count(*) FROM items WHERE type = 'book'") == BOOKS
    upper_in_items = "SELECT count(*) FROM items WHERE json_extract(data, '$.title') = upper(json_extract(data, '$.title'))"  # noqa: E501
    assert scalar(books_db, upper_in_items) == BOOKS
    assert scalar(books_db, "SELECT count(*) FROM errors WHERE kind = 'spider'") == 1
    stats = json.loads(scalar(books_db, "SELECT stats FROM crawls"))
    assert (stats["items"], stats["items_by_type"]) == (BOOKS, {"book": BOOKS})
    assert stats["errors"] == {"http_status": 1, "spider": 1}
    assert snapshot(books_db) == before  # no request was crawled, no page or link changed
    # Each reparse kept the items it replaced: the crawl's, then the first reparse's.
    history = "SELECT reason, count(*), count(replaced_by) FROM item_history GROUP BY reason"
    assert rows(books_db, history) == [("reparse", 2 * BOOKS, 0)]
    title = "json_extract(data, '$.title')"
    crawled = f"SELECT count(*) FROM item_history WHERE {title} != upper({title})"
    assert scalar(books_db, crawled) == BOOKS


STOPPING_SPIDER = '''
from crawler import StopCrawl
from tests.spiders import FollowAllSpider


class HalfwaySpider(FollowAllSpider):
    """FollowAllSpider that stops a reparse at page 30."""

    name = "follow_all"  # the same crawl

    async def parse(self, response):
        if response.url.endswith("/p/30"):
            raise StopCrawl("half-way")
        async for output in super().parse(response):
            yield output
'''
_ITEM = "item_id, crawl_id, request_id, page_url, type, data, created_at"


async def test_reparse_keeps_replaced_items_in_history_on_either_backend(
    follow_site: BaseTestServer, database: Target, tmp_path: Path, run_cli: RunCli
) -> None:
    spider = with_start_urls(FollowAllSpider, [str(follow_site.make_url("/p/0"))])
    settings = {"allow_private_addresses": True, "store_body": True, "progress_interval": 60.0}
    await crawl(spider, db=database, settings=settings)
    current = f"SELECT id AS {_ITEM} FROM items ORDER BY id"
    crawled = rows(database, current)
    assert len(crawled) == 60
    for _ in range(2):
        done = await run_cli("reparse", "tests/spiders.py:FollowAllSpider", str(database))
        assert done.code == 0, done.stderr
    # The crawl's items, then the first reparse's, each as it was, replaced by no run.
    archived = rows(database, f"SELECT {_ITEM} FROM item_history ORDER BY id")
    assert archived[:60] == crawled and len(archived) == 120
    history = "SELECT reason, count(*), count(replaced_by) FROM item_history GROUP BY reason"
    assert rows(database, history) == [("reparse", 120, 0)]
    # item_versions: each page's versions follow one another, the current one open-ended.
    versions = sorted(
        rows(database, "SELECT request_id, valid_from, valid_to FROM item_versions"),
        key=lambda v: (v[0], v[1], v[2] is None, v[2] or ""),
    )
    assert len(versions) == 180
    for (request, start, end), (following, later, _) in itertools.pairwise(versions):
        if request == following:
            assert end is not None and start <= end <= later
    assert scalar(database, "SELECT count(*) FROM item_versions WHERE valid_to IS NULL") == 60
    # A reparse a callback stops changes nothing, its history included: one transaction.
    before = rows(database, current), archived
    (tmp_path / "halfway.py").write_text(STOPPING_SPIDER)
    stopped = await run_cli("reparse", str(tmp_path / "halfway.py"), str(database))
    assert stopped.code == 0, stopped.stderr
    assert "nothing was changed" in stopped.stdout + stopped.stderr
    assert (
        rows(database, current),
        rows(database, f"SELECT {_ITEM} FROM item_history ORDER BY id"),
    ) == before


async def test_reparse_rebuilds_deduplication_keys(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    keyed = upper_spider(tmp_path, dedupe=("upc",))
    for _ in range(2):  # keys of replaced items must not make their new versions duplicates
        summary = await reparse(run_cli, keyed, books_db)
        assert summary["items_by_type"] == {"book": BOOKS}
        assert scalar(books_db, "SELECT count(*) FROM item_keys") == BOOKS
        # Each key names its page, so that a re-crawl of that page can retire it.
        assert scalar(books_db, "SELECT count(*) FROM item_keys WHERE request_id IS NULL") == 0
    doubled = upper_spider(tmp_path, dedupe=("title",), copies=2)
    summary = await reparse(run_cli, doubled, books_db)
    assert summary["items_by_type"] == {"book": BOOKS}
    assert summary["items_dropped"] == {"duplicate": BOOKS}
    assert scalar(books_db, "SELECT count(*) FROM book") == BOOKS
    # The keys are those of the stored items only: titles now, no upc left over.
    titles = sorted(f'["{str(b["title"]).upper()}"]' for b in expected_books(BOOKS))
    assert [r[0] for r in rows(books_db, "SELECT key FROM item_keys ORDER BY key")] == titles


async def test_pages_without_a_body_keep_their_items(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    with sqlite3.connect(books_db) as conn:
        conn.execute(
            "UPDATE pages SET body = NULL WHERE request_id IN "
            "(SELECT request_id FROM items ORDER BY id LIMIT 5)"
        )
    conn.close()
    summary = await reparse(run_cli, upper_spider(tmp_path), books_db)
    assert summary["without_body"] == 5
    assert summary["items_by_type"] == {"book": BOOKS - 5}
    assert scalar(books_db, "SELECT count(*) FROM book") == BOOKS
    assert scalar(books_db, "SELECT count(*) FROM book WHERE title != upper(title)") == 5
    assert scalar(books_db, "SELECT count(*) FROM book WHERE title_length IS NULL") == 5


async def test_reparse_refuses_files_it_cannot_reparse(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    no_bodies = copy_database(books_db, tmp_path / "no-bodies.db")
    running = copy_database(books_db, tmp_path / "running.db")
    with sqlite3.connect(no_bodies) as conn:
        conn.execute("UPDATE pages SET body = NULL")
    conn.close()
    with sqlite3.connect(running) as conn:
        conn.execute("UPDATE crawls SET status = 'running', heartbeat_at = ?", (time.time(),))
    conn.close()
    not_crawl = tmp_path / "other.db"
    with sqlite3.connect(not_crawl) as conn:
        conn.execute("CREATE TABLE pages (x)")
    conn.close()
    cases = [
        (["books", str(no_bodies)], "no stored page bodies to reparse; crawl with -s store_body"),
        (["site", str(books_db)], "holds a crawl of spider 'books', not 'site'"),
        (["books", str(running)], "a crawl is running on"),
        (["books", str(tmp_path / "none.db")], "no such database file"),
        (["books", str(not_crawl)], "is not a crawl database"),
        (["nosuchspider", str(books_db)], "unknown spider 'nosuchspider'"),
    ]  # fmt: skip
    for args, message in cases:
        result = await run_cli("reparse", *args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "none.db").exists()
    assert scalar(no_bodies, "SELECT count(*) FROM book") == BOOKS  # nothing was removed
