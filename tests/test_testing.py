"""Testing spiders offline: run_callback on HTML text, files and fixtures; `crawler record`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import (
    CrawlSpider,
    Request,
    RequestBatch,
    Response,
    Rule,
    Spider,
    SpiderError,
    crawl,
    text_of,
)
from crawler.cli.common import with_start_urls
from crawler.demo import expected_quotes, quotes_app
from crawler.spider.testing import fixture_name, load_fixture, run_callback, save_fixture
from spiders.quotes import Quote, QuotesSpider
from tests.conftest import RunCli
from tests.sites import html_page

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


class EchoSpider(Spider):
    """Yields what it sees of the response, and follows its links to `parse_detail`."""

    name = "echo"
    start_urls = ("https://shop.example/start",)

    async def parse(self, response: Response) -> AsyncIterator[dict[str, Any] | Request]:
        yield {
            "url": response.url,
            "status": response.status,
            "title": text_of(response.css_first("title")),
            "heading": text_of(response.css_first("h1")),
            "meta": response.meta,
            "depth": response.depth,
            "encoding": response.encoding,
        }
        for link in response.css("a"):
            yield response.follow(link, callback=self.parse_detail)

    async def parse_detail(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        yield {"detail": text_of(response.css_first("h1"))}

    async def parse_badly(self, response: Response) -> AsyncIterator[object]:
        yield {"fine": 1}
        raise ValueError("selector went wrong")

    async def parse_garbage(self, response: Response) -> AsyncIterator[object]:
        yield 42

    async def parse_lost(self, response: Response) -> AsyncIterator[Request]:
        yield Request("https://shop.example/x", callback="no_such_method")


PAGE = html_page('<h1>Caffè</h1><a href="/item/1">one</a><a href="item/2">two</a>', title="Shop")


async def test_run_callback_on_html_text() -> None:
    result = await run_callback(
        EchoSpider, PAGE, url="https://shop.example/list/", meta={"page": 3}, depth=2
    )

    assert result.items == [
        {
            "url": "https://shop.example/list/",
            "status": 200,
            "title": "Shop",
            "heading": "Caffè",
            "meta": {"page": 3},
            "depth": 2,
            "encoding": "utf-8",
        }
    ]
    assert [(r.url, r.callback, r.depth) for r in result.requests] == [
        ("https://shop.example/item/1", "parse_detail", 3),
        ("https://shop.example/list/item/2", "parse_detail", 3),
    ]
    assert result.response.request.callback == "parse"


async def test_run_callback_defaults_to_the_spiders_first_start_url() -> None:
    result = await run_callback(EchoSpider(), PAGE)
    assert result.response.url == "https://shop.example/start"
    assert result.requests[1].url == "https://shop.example/item/2"


async def test_run_callback_on_a_file(tmp_path: Path) -> None:
    page = tmp_path / "detail.html"
    page.write_bytes(html_page("<h1>Dé</h1>").encode("cp1252").replace(b"utf-8", b"cp1252"))

    result = await run_callback(
        EchoSpider, page, url="https://shop.example/item/1", callback="parse_detail"
    )

    assert result.items == [{"detail": "Dé"}]
    assert result.requests == []


async def test_run_callback_on_a_recorded_fixture_uses_its_url_status_and_headers(
    tmp_path: Path,
) -> None:
    fixture = save_fixture(
        tmp_path,
        url="https://shop.example/old",
        final_url="https://shop.example/new/",
        status=203,
        headers={"Content-Type": "text/html; charset=windows-1252", "Content-Length": "9"},
        body=html_page("<h1>Caf\xe9</h1><a href='more'>m</a>").encode("cp1252"),
    )
    assert fixture == tmp_path / "old.json"

    for path in (fixture, tmp_path / "old.html"):  # either file of the pair
        result = await run_callback(EchoSpider, path)
        assert result.response.request.url == "https://shop.example/old"
        [item] = result.items
        assert isinstance(item, dict)
        assert (item["url"], item["status"], item["heading"]) == (
            "https://shop.example/new/",
            203,
            "Café",
        )
        assert [r.url for r in result.requests] == ["https://shop.example/new/more"]
    recorded = json.loads(fixture.read_text())
    assert recorded["headers"] == {"Content-Type": "text/html; charset=windows-1252"}
    assert recorded["body"] == "old.html"


async def test_run_callback_lets_the_test_see_what_went_wrong() -> None:
    with pytest.raises(ValueError, match="selector went wrong"):
        await run_callback(EchoSpider, PAGE, callback="parse_badly")
    with pytest.raises(SpiderError, match="yielded int, expected an item"):
        await run_callback(EchoSpider, PAGE, callback="parse_garbage")
    with pytest.raises(SpiderError, match="no callback named 'no_such_method'"):
        await run_callback(EchoSpider, PAGE, callback="parse_lost")
    with pytest.raises(SpiderError, match="no callback named 'parse_nothing'"):
        await run_callback(EchoSpider, PAGE, callback="parse_nothing")
    with pytest.raises(SpiderError, match="not a readable page fixture"):
        await run_callback(EchoSpider, Path("/nonexistent/page.json"))


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/", "index"),
        ("http://h", "index"),
        ("http://h/index.html", "index"),
        ("http://h/catalogue/page-2.html", "catalogue-page-2"),
        ("http://h/page/2/", "page-2"),
        ("http://h/author/J-K-Rowling", "author-J-K-Rowling"),
        ("http://h/search?q=caf%C3%A9&page=2", "search-q-caf-C3-A9-page-2"),
        ("http://h/" + "a" * 200, "a" * 80),
    ],
)
def test_fixture_names_come_from_the_url_path_and_query(url: str, name: str) -> None:
    assert fixture_name(url) == name


def test_recording_a_url_again_replaces_its_fixture_and_others_get_a_number(
    tmp_path: Path,
) -> None:
    def save(url: str, body: bytes) -> Path:
        return save_fixture(tmp_path, url=url, final_url=url, status=200, headers={}, body=body)

    assert save("http://h/", b"one") == tmp_path / "index.json"
    assert save("http://h/index.html", b"two") == tmp_path / "index-2.json"
    assert save("http://h/", b"three") == tmp_path / "index.json"
    assert load_fixture(tmp_path / "index.json").body == b"three"
    assert load_fixture(tmp_path / "index-2.json").body == b"two"
    assert (tmp_path / "index.body").is_file()  # no Content-Type: not called .html


@pytest.fixture
async def quotes_site() -> AsyncIterator[BaseTestServer]:
    """The demo quotes site on 127.0.0.1."""
    server = TestServer(quotes_app(), host="127.0.0.1")
    async with server:
        yield server


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.read()


async def test_record_saves_pages_from_the_network(
    quotes_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    first, author = str(quotes_site.make_url("/")), str(quotes_site.make_url("/page/2/"))
    out = tmp_path / "fixtures"

    result = await run_cli("record", "quotes", first, author, "-o", str(out))

    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"saved {out / 'index.json'} (200, {len(await fetch(first)):,} bytes) from {first}",
        f"saved {out / 'page-2.json'} (200, {len(await fetch(author)):,} bytes) from {author}",
    ]
    recorded = json.loads((out / "index.json").read_text())
    assert recorded["url"] == recorded["final_url"] == first
    assert recorded["status"] == 200
    assert recorded["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert recorded["source"] == "network"
    assert (out / "index.html").read_bytes() == await fetch(first)
    page = await run_callback(QuotesSpider, out / "page-2.json")
    assert page.items == [Quote(**q) for q in expected_quotes()[10:20]]  # type: ignore[arg-type]


async def test_record_reads_pages_from_a_crawl_database(
    quotes_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    db = tmp_path / "quotes.db"
    start = str(quotes_site.make_url("/"))
    spider = with_start_urls(QuotesSpider, [start])
    await crawl(spider, db=db, settings={**FAST, "store_body": True, "max_pages": 5})
    out = tmp_path / "from-db"

    result = await run_cli("record", "quotes", "--from", str(db), start, "-o", str(out))

    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"saved {out / 'index.json'} (200, ")
    recorded = json.loads((out / "index.json").read_text())
    assert recorded["headers"] == {"Content-Type": "text/html; charset=utf-8"}
    assert recorded["source"] == "quotes.db"
    assert (out / "index.html").read_bytes() == await fetch(start)


async def test_record_from_a_crawl_without_bodies_says_how_to_keep_them(
    quotes_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    db = tmp_path / "quotes.db"
    start = str(quotes_site.make_url("/"))
    await crawl(with_start_urls(QuotesSpider, [start]), db=db, settings={**FAST, "max_pages": 2})

    result = await run_cli("record", "quotes", "--from", str(db), start, "-o", str(tmp_path))

    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {db} has no body for {start}; crawl with -s store_body=true to keep bodies"
    ]


async def test_record_reports_a_page_it_cannot_fetch(tmp_path: Path, run_cli: RunCli) -> None:
    server = TestServer(quotes_app(), host="127.0.0.1")
    async with server:
        gone = str(server.make_url("/"))  # nothing listens there once the server is closed
    (tmp_path / "config.toml").write_text("[crawler]\nmax_retries = 0\n")  # read from the cwd

    result = await run_cli("record", "quotes", gone, "-o", "out", cwd=tmp_path)

    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot fetch {gone}: connection: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "http://127.0.0.1:9/"], "error: unknown spider 'nope' (known spiders: "),
        (["quotes", "ftp://127.0.0.1/"], "error: bad start URL 'ftp://127.0.0.1/'"),
        (["quotes", "not a url"], "error: bad start URL 'not a url'"),
        (["quotes", "--from", "missing.db", "http://127.0.0.1:9/"], "error: no such database"),
    ],
)
async def test_bad_record_input_is_one_line_and_exit_2(
    args: list[str], message: str, run_cli: RunCli, tmp_path: Path
) -> None:
    result = await run_cli("record", *args, "-o", str(tmp_path / "out"))
    assert result.code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message)
    assert not (tmp_path / "out").exists()


async def test_record_refuses_a_url_the_database_does_not_hold(
    quotes_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    db = tmp_path / "quotes.db"
    start = str(quotes_site.make_url("/"))
    spider = with_start_urls(QuotesSpider, [start])
    await crawl(spider, db=db, settings={**FAST, "store_body": True, "max_pages": 1})
    other = str(quotes_site.make_url("/page/9/"))

    result = await run_cli("record", "quotes", "--from", str(db), other, "-o", str(tmp_path))

    assert result.code == 2
    assert result.stderr.strip().splitlines() == [f"error: {db} has no page for {other}"]


class BatchAndRulesSpider(CrawlSpider):
    """Follows /keep links by its rule and every link again as one follow_all() batch."""

    name = "batch_and_rules"
    rules = (Rule(allow=(r"/keep",)),)

    async def parse_start_url(self, response: Response) -> AsyncIterator[RequestBatch]:
        yield response.follow_all(callback=self.parse_start_url)


async def test_run_callback_returns_a_batch_as_its_requests_and_leaves_out_refused_links() -> None:
    page = html_page('<a href="/keep/1">k</a><a href="/other">o</a>')
    result = await run_callback(BatchAndRulesSpider, page, url="http://s.test/")
    assert [(r.url, r.callback) for r in result.requests] == [
        ("http://s.test/keep/1", "parse_start_url"),
        ("http://s.test/other", "parse_start_url"),
        ("http://s.test/keep/1", "parse_by_rule"),  # the rule; /other matched none: left out
    ]
    assert result.items == []
