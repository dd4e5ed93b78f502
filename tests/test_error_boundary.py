"""The two error boundaries: one request's failure ends that request, never the crawl.

A fault anywhere between fetching a response and handing its records to the writer ends that
request as `failed` with an `internal` error (traceback in `errors`); a row the database
refuses is found by halving its batch, and only its request fails. Each test here ended the
crawl as `failed` before the boundaries existed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer

from crawler import Request, Response, Spider, crawl
from crawler.cli.common import with_start_urls
from crawler.errors import StorageError
from crawler.failures import storable
from crawler.records import PageRecord, PageResult, RequestState, utc_now
from crawler.settings import load_settings
from crawler.spider.http import Response as HttpResponse
from crawler.stats import Stats
from crawler.store.schema import open_database
from crawler.store.writer import Storage
from tests.conftest import rows, scalar
from tests.invariants import assert_all_accounted_for

QUIET: dict[str, object] = {"progress_interval": 60.0, "max_retries": 0}


class LinkSpider(Spider):
    """Follows every link; yields one item per page, and whatever `extra` returns."""

    name = "links"
    allowed_domains = ("127.0.0.1",)

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        yield {"url": response.url}
        for extra in self.extra(response):
            yield extra
        for url in response.links():
            yield response.follow(url)

    def extra(self, response: Response) -> list[object]:
        return []


def spider_on(server: BaseTestServer, cls: type[LinkSpider] = LinkSpider) -> type[Spider]:
    return with_start_urls(cls, [str(server.make_url("/p/0"))])


def internal_errors(db: Path) -> list[tuple[str, str]]:
    return rows(db, "SELECT url, message FROM errors WHERE kind = 'internal' ORDER BY id")


async def test_an_exception_outside_the_callback_fails_only_its_request(
    follow_site: BaseTestServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_links = HttpResponse.links

    def links(self: HttpResponse) -> list[str]:
        if self.url.endswith("/p/7"):
            raise RuntimeError("the link extractor broke")
        return real_links(self)

    monkeypatch.setattr(HttpResponse, "links", links)  # runs before the callback, in the engine
    stats = await crawl(spider_on(follow_site), db=db_path, settings=QUIET)

    assert rows(db_path, "SELECT status FROM crawls") == [("finished",)]
    url = str(follow_site.make_url("/p/7"))
    assert rows(db_path, "SELECT state, reason FROM requests WHERE url = ?", (url,)) == [
        ("failed", "internal: RuntimeError: the link extractor broke")
    ]
    ((error_url, message),) = internal_errors(db_path)
    assert error_url == url
    assert message.startswith("RuntimeError: the link extractor broke")
    assert "Traceback (most recent call last)" in message and "def links" not in message
    assert "in links" in message  # the frame that raised
    assert stats["errors"] == {"internal": 1}
    assert stats["requests_failed"] == 1
    assert stats["pages"] == 59  # every other page was fetched and stored
    assert_all_accounted_for(db_path)

    monkeypatch.setattr(HttpResponse, "links", real_links)
    again = await crawl(spider_on(follow_site), db=db_path, settings=QUIET)
    assert again["pages"] == 0  # the failure is final: a resume does not retry it forever


async def test_an_exception_in_the_fetch_path_fails_only_its_request(
    follow_site: BaseTestServer, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_compress = gzip.compress

    def compress(data: bytes, compresslevel: int = 9, *, mtime: float | None = None) -> bytes:
        if b"<h1>Page 3</h1>" in data:
            raise MemoryError("no room to compress")
        return real_compress(data, compresslevel, mtime=mtime)

    monkeypatch.setattr(gzip, "compress", compress)  # as the engine stores a fetched body
    stats = await crawl(spider_on(follow_site), db=db_path, settings={**QUIET, "store_body": True})
    assert rows(db_path, "SELECT status FROM crawls") == [("finished",)]
    assert stats["errors"] == {"internal": 1}
    assert stats["pages"] == 59
    assert scalar(db_path, "SELECT reason FROM requests WHERE state = 'failed'") == (
        "internal: MemoryError: no room to compress"
    )


class SurrogateSpider(LinkSpider):
    """Yields an item holding lone surrogates from one page, and meta holding one."""

    name = "surrogates"

    def extra(self, response: Response) -> list[object]:
        if response.url.endswith("/p/5"):
            return [
                {"text": "a\ud800b\udfffc", "nested": {"k\udc80": ["\ud83d"]}},
                Request(response.urljoin("/p/999"), meta={"note": "x\ud800"}),
            ]
        return []


async def test_lone_surrogates_are_stored_as_replacement_characters_and_counted(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    stats = await crawl(spider_on(follow_site, SurrogateSpider), db=db_path, settings=QUIET)
    assert rows(db_path, "SELECT status FROM crawls") == [("finished",)]
    (data,) = [json.loads(d) for (d,) in rows(db_path, "SELECT data FROM items") if "text" in d]
    assert data == {"text": "a\ufffdb\ufffdc", "nested": {"k\ufffd": ["\ufffd"]}}
    assert stats["strings_replaced"] == 4
    url = str(follow_site.make_url("/p/999"))
    assert scalar(db_path, "SELECT meta FROM requests WHERE url = ?", (url,)) == (
        '{"note":"x\ufffd"}'
    )
    assert stats["errors"] == {"http_status": 1}  # /p/999 is a 404; nothing internal
    assert_all_accounted_for(db_path)


class OverflowSpider(LinkSpider):
    """From one page, a request whose priority no SQLite integer can hold."""

    name = "overflow"

    def extra(self, response: Response) -> list[object]:
        if response.url.endswith("/p/4"):
            return [Request(response.urljoin("/p/4?again=1"), priority=2**70)]
        return []


async def test_a_value_sqlite_cannot_hold_is_refused_at_admission(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    stats = await crawl(spider_on(follow_site, OverflowSpider), db=db_path, settings=QUIET)
    assert rows(db_path, "SELECT status FROM crawls") == [("finished",)]
    assert rows(db_path, "SELECT kind, message FROM errors") == [
        (
            "spider",
            f"request {follow_site.make_url('/p/4?again=1')}: priority must be an "
            "integer of 64 bits at most",
        )
    ]
    assert stats["pages"] == 60


async def test_a_row_the_database_refuses_fails_only_its_request(
    follow_site: BaseTestServer,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Take away the callbacks' own care for text SQLite cannot hold: the writer is the last
    # line, and must find the one page whose rows it cannot store.
    monkeypatch.setattr("crawler.engine.callbacks.storable", lambda text: (text, 0))
    with caplog.at_level(logging.WARNING, logger="crawler"):
        stats = await crawl(spider_on(follow_site, SurrogateSpider), db=db_path, settings=QUIET)
    assert rows(db_path, "SELECT status FROM crawls") == [("finished",)]
    url = str(follow_site.make_url("/p/5"))
    ((state, reason),) = rows(db_path, "SELECT state, reason FROM requests WHERE url = ?", (url,))
    assert state == "failed" and reason.startswith("internal: UnicodeEncodeError")
    ((error_url, message),) = internal_errors(db_path)
    assert error_url == url and message.startswith("UnicodeEncodeError")
    assert stats["errors"] == {"internal": 1, "http_status": 1}
    assert stats["pages"] == 60  # /p/5 is the one page not stored ...
    assert scalar(db_path, "SELECT count(*) FROM pages WHERE url = ?", (url,)) == 0
    # ... but the requests it found are: /p/999 (its meta was storable) was fetched
    assert scalar(db_path, "SELECT count(*) FROM pages WHERE url LIKE '%/p/999'") == 1
    assert any("database refused the results" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)  # one line each, no traceback
    assert_all_accounted_for(db_path)


async def _storage_on(db: Path) -> tuple[Storage, Stats, Any]:
    conn = await open_database(db)
    await conn.execute(
        "INSERT INTO crawls (spider, started_at, status, settings)"
        " VALUES ('t', '', 'running', '{}')"
    )
    await conn.executemany(
        "INSERT INTO requests (url, fingerprint, host, depth, state, crawl_id, discovered_at)"
        " VALUES (?, ?, 'h', 0, 'pending', 1, '')",
        [(f"http://h/{n}", n) for n in range(40)],
    )
    await conn.commit()
    stats = Stats()
    settings = load_settings(overrides={"store_body": False}).settings
    storage = Storage(conn, run_id=1, settings=settings, stats=stats, on_committed=lambda n: None)
    await storage.load_counts()
    return storage, stats, conn


def _result(n: int, *, item: str = '{"n":1}') -> PageResult:
    url = f"http://h/{n}"
    return PageResult(
        request_id=n + 1,
        url=url,
        state=RequestState.DONE,
        attempts=1,
        page=PageRecord(
            url=url,
            final_url=url,
            status=200,
            content_type="text/html",
            encoding="utf-8",
            size_bytes=10,
            depth=0,
            elapsed_ms=1.0,
            fetched_at=utc_now(),
            body=None,
        ),
        items=[("thing", item)],
    )


@pytest.mark.parametrize("bad", [13, 0, 39])
async def test_the_writer_finds_the_refused_result_in_a_batch_and_stores_the_rest(
    db_path: Path, bad: int
) -> None:
    storage, stats, conn = await _storage_on(db_path)
    try:
        results = [_result(n) for n in range(40)]
        results[bad] = _result(bad)
        page = results[bad].page
        assert page is not None
        page.encoding = b"utf-8"  # type: ignore[assignment]  # no JSON (the rows' carrier) for it
        results[(bad + 7) % 40].items = [("thing", '{"s":"\ud800"}')]  # not even text
        await write_all(storage, results)
    finally:
        await conn.close()
    failed = dict(rows(db_path, "SELECT id - 1, reason FROM requests WHERE state = 'failed'"))
    assert sorted(failed) == sorted({bad, (bad + 7) % 40})
    assert failed[bad].startswith("internal: TypeError")
    assert failed[(bad + 7) % 40].startswith("internal: UnicodeEncodeError")
    assert scalar(db_path, "SELECT count(*) FROM pages") == 38
    assert scalar(db_path, "SELECT count(*) FROM items") == 38
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'done'") == 38
    # counted once each, as committed: the halves that failed left the counters alone
    assert (stats.pages, stats.items, stats.done, stats.failed) == (38, 38, 38, 2)
    assert stats.errors == {"internal": 2}
    assert scalar(db_path, "PRAGMA integrity_check") == "ok"


async def test_a_database_failure_is_not_mistaken_for_a_bad_row(db_path: Path) -> None:
    storage, _, conn = await _storage_on(db_path)
    # Another connection holds the write lock: SQLITE_BUSY is the database's state, and
    # halving the batch cannot help.
    blocker = sqlite3.connect(db_path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    await conn.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(StorageError, match="database write failed: database is locked"):
            await write_all(storage, [_result(n) for n in range(4)])
    finally:
        blocker.rollback()
        blocker.close()
        await conn.close()
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'failed'") == 0


def test_storable_replaces_exactly_the_lone_surrogates() -> None:
    assert storable("plain") == ("plain", 0)
    assert storable("é\ud800\U0001f600\udfff") == ("é\ufffd\U0001f600\ufffd", 2)


async def write_all(storage: Storage, results: list[PageResult]) -> None:
    """Run the writer over `results` until it has committed them all."""
    writer = asyncio.create_task(storage.run_writer())
    for result in results:
        await storage.submit(result)
    await storage.stop_writer()
    await writer
