"""Fetching against misbehaving local servers: retries, Retry-After, redirects, limits, errors."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler import Request, crawl
from crawler.cli.common import with_start_urls
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Deferred, Failed, Fetched, parse_retry_after
from crawler.settings import load_settings
from tests.conftest import rows, scalar
from tests.deadline_timers import record_timers
from tests.sites import html_page
from tests.spiders import FollowAllSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0, "max_retries": 2}
HITS = web.AppKey("hits", Counter[str])
TIMES = web.AppKey("times", list[float])


def html(body: str) -> web.Response:
    return web.Response(text=html_page(body), content_type="text/html")


def fault_app() -> web.Application:
    """Endpoints that fail in one way each, counting hits per path."""
    app = web.Application()
    app[HITS] = Counter()
    app[TIMES] = []

    async def index(request: web.Request) -> web.Response:
        paths = [
            "/flaky",
            "/always",
            "/retry-after",
            "/redirect",
            "/loop-a",
            "/chain/0",
            "/big",
            "/big-chunked",
            "/bomb",
            "/image.png",
            "/missing",
            "/offsite-redirect",
            "/slow",
        ]
        return html("".join(f'<a href="{p}">{p}</a>' for p in paths))

    async def flaky(request: web.Request) -> web.Response:
        app[HITS]["flaky"] += 1
        if app[HITS]["flaky"] <= 2:
            return web.Response(status=503, text="busy")
        return html("<p>recovered</p>")

    async def always(request: web.Request) -> web.Response:
        app[HITS]["always"] += 1
        return web.Response(status=500, text="broken")

    async def retry_after(request: web.Request) -> web.Response:
        app[HITS]["retry-after"] += 1
        app[TIMES].append(time.monotonic())
        if app[HITS]["retry-after"] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return html("<p>after the wait</p>")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("target/../final")

    async def final(request: web.Request) -> web.Response:
        return html("<p>final</p>")

    async def loop_a(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/loop-b")

    async def loop_b(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/loop-a")

    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/chain/{n + 1}")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000, content_type="text/html")

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    async def bomb(request: web.Request) -> web.Response:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = (
            b"".join(compressor.compress(b"\0" * 1_000_000) for _ in range(50)) + compressor.flush()
        )
        return web.Response(
            body=data, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"}
        )

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 100, content_type="image/png")

    async def offsite_redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://elsewhere.invalid/page")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return html("too late")

    for path, handler in [
        ("/", index),
        ("/flaky", flaky),
        ("/always", always),
        ("/retry-after", retry_after),
        ("/redirect", redirect),
        ("/final", final),
        ("/loop-a", loop_a),
        ("/loop-b", loop_b),
        ("/chain/{n}", chain),
        ("/big", big),
        ("/big-chunked", big_chunked),
        ("/bomb", bomb),
        ("/image.png", image),
        ("/offsite-redirect", offsite_redirect),
        ("/slow", slow),
    ]:
        app.router.add_get(path, handler)
    return app


@pytest.fixture
async def faults() -> AsyncIterator[TestServer]:
    server = TestServer(fault_app(), host="127.0.0.1")
    async with server:
        yield server


async def test_hostile_endpoints_end_in_recorded_states(faults: TestServer, db_path: Path) -> None:
    spider = with_start_urls(FollowAllSpider, [str(faults.make_url("/"))])
    settings = {**FAST, "max_size": 4096, "max_redirects": 3, "request_timeout": 0.5}
    stats = await crawl(spider, db=db_path, settings=settings)
    states = {
        str(url).rsplit("/", 1)[-1] if "chain" not in str(url) else "chain": (state, reason)
        for url, state, reason in rows(
            db_path, "SELECT url, state, reason FROM requests WHERE host = '127.0.0.1'"
        )
    }
    assert states["flaky"] == ("done", None)
    assert states["always"] == ("failed", "http_status: 500")
    assert states["retry-after"] == ("done", None)
    assert states["redirect"] == ("done", None)
    assert str(states["loop-a"][1]).startswith("redirect: redirect loop")
    assert str(states["chain"][1]).startswith("redirect: more than 3 redirects")
    assert states["big"] == ("failed", "too_large: Content-Length 5000 exceeds max_size 4096")
    assert states["big-chunked"] == ("failed", "too_large: body exceeds max_size 4096 bytes")
    assert states["bomb"] == ("failed", "too_large: body exceeds max_size 4096 bytes")
    assert states["image.png"] == ("done", None)
    assert states["missing"] == ("failed", "http_status: 404")
    assert str(states["offsite-redirect"][1]).startswith(
        "redirect: redirect to http://elsewhere.invalid/page refused: offsite"
    )
    assert str(states["slow"][1]).startswith("timeout")
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'pending'") == 0
    assert faults.app[HITS]["flaky"] == 3
    assert faults.app[HITS]["always"] == 3  # one attempt + max_retries
    # the redirect's final URL is recorded on its page, and the image is stored unparsed
    assert scalar(db_path, "SELECT final_url FROM pages WHERE url LIKE '%/redirect'") == str(
        faults.make_url("/final")
    )
    assert rows(
        db_path, "SELECT status, content_type, encoding FROM pages WHERE url LIKE '%image.png'"
    ) == [(200, "image/png", None)]
    # every failed attempt is an error row with its attempt number
    attempts = rows(
        db_path,
        "SELECT kind, attempt, message FROM errors WHERE url LIKE '%/always' ORDER BY attempt",
    )
    assert attempts == [
        ("http_status", 1, "HTTP 500"),
        ("http_status", 2, "HTTP 500"),
        ("http_status", 3, "HTTP 500"),
    ]
    assert stats["errors"]["http_status"] == scalar(
        db_path, "SELECT count(*) FROM errors WHERE kind = 'http_status'"
    )
    assert stats["retries"] >= 4


async def test_retry_after_is_honoured_without_holding_the_permit(
    faults: TestServer, db_path: Path
) -> None:
    spider = with_start_urls(FollowAllSpider, [str(faults.make_url("/retry-after"))])
    await crawl(spider, db=db_path, settings={**FAST, "concurrency": 1})
    first, second = faults.app[TIMES]
    assert second - first >= 0.9  # the server asked for 1 second


async def test_long_retry_after_goes_back_to_the_frontier(faults: TestServer) -> None:
    settings = load_settings(overrides={**FAST, "retry_after_inline": 0.5}).settings
    async with Fetcher(settings, lambda url: None) as fetcher:
        outcome = await fetcher.fetch(Request(str(faults.make_url("/retry-after"))))
        assert isinstance(outcome, Deferred)
        assert outcome.attempts == 1
        assert 0.5 < outcome.not_before - time.time() <= 1.0
        later = await fetcher.fetch(
            Request(str(faults.make_url("/retry-after"))), attempts_before=1
        )
    assert isinstance(later, Fetched)
    assert later.status == 200
    assert later.attempts == 2


async def test_deferred_request_is_fetched_later_in_the_same_crawl(
    faults: TestServer, db_path: Path
) -> None:
    spider = with_start_urls(FollowAllSpider, [str(faults.make_url("/retry-after"))])
    stats = await crawl(spider, db=db_path, settings={**FAST, "retry_after_inline": 0.2})
    assert stats["rescheduled"] == 1
    assert rows(db_path, "SELECT state, attempts FROM requests") == [("done", 2)]
    assert rows(db_path, "SELECT kind, message FROM errors") == [("http_status", "HTTP 429")]


async def test_connection_refused_is_a_connection_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(overrides=FAST).settings
    async with Fetcher(settings, lambda url: None) as fetcher:
        outcome = await fetcher.fetch(Request(f"http://127.0.0.1:{port}/"))
    assert isinstance(outcome, Failed)
    assert outcome.error.kind == "connection"
    assert [f.attempt for f in outcome.failures] == [1, 2, 3]


async def test_gzip_bodies_are_decoded(db_path: Path) -> None:
    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(html_page("<p class='n'>1</p>").encode())
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"}
        )

    app = web.Application()
    app.router.add_get("/", gzipped)
    async with TestServer(app, host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/"))])
        stats = await crawl(spider, db=db_path, settings=FAST)
    assert stats["items"] == 1


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("3", 3, 3),
        ("0", 0, 0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_parse_retry_after(value: str | None, low: float | None, high: float | None) -> None:
    seconds = parse_retry_after(value)
    if low is None or high is None:
        assert seconds is None
    else:
        assert seconds is not None
        assert low <= seconds <= high


def test_parse_retry_after_future_http_date() -> None:
    from email.utils import formatdate

    seconds = parse_retry_after(formatdate(time.time() + 120, usegmt=True))
    assert seconds is not None
    assert 100 < seconds <= 121


async def test_a_per_host_timeout_shorter_than_the_sessions_fires_on_time(
    faults: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's request_timeout is 30 s (its deadlines are looked at every 0.25 s);
    127.0.0.1's is 0.05 s. Eight attempts at a page that answers after 2 s each time out
    after 0.05 s, not at the next look (0.2 s late each): each one's deadline has a timer of
    its own, armed for it as the attempt starts."""
    timers = record_timers(monkeypatch)
    loaded = load_settings(
        config={"hosts": {"127.0.0.1": {"request_timeout": 0.05}}},
        overrides={**FAST, "max_retries": 0, "request_timeout": 30.0},
    )
    async with Fetcher(loaded.settings, lambda url: None) as fetcher:
        for _ in range(8):
            outcome = await fetcher.fetch(Request(str(faults.make_url("/slow"))))
            assert isinstance(outcome, Failed)
            assert outcome.error.kind == "timeout"
    assert len(timers) == 8
    assert all(armed.when == armed.deadline for armed in timers)
