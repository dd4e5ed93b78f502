"""The hostile web: crawl every fault the fault server has, and account for every URL.

Each crawl ends with `assert_crawl_invariant`: every discovered URL is in `requests` in a
terminal state, `crawls.stats` equals the tables, and the file passes `integrity_check`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import tracemalloc
from collections.abc import AsyncIterator
from typing import Final

import pytest
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.links import canonical_url, try_canonical_url
from tests.conftest import ROOT, RunCli, Target, rows, scalar
from tests.faults import FAULTS, LONG_URL_PATH, MIB, UNICODE_PATH, WEIRD_HREFS, FaultServer
from tests.hostile_spiders import BLOCK_SECONDS, FLOOD_REQUESTS, CallbackFaultsSpider
from tests.invariants import assert_all_accounted_for, assert_crawl_invariant
from tests.sites import follow_app
from tests.spiders import FollowAllSpider

HOSTILE_SETTINGS: Final[dict[str, object]] = {
    "request_timeout": 2.0,
    "max_size": MIB,
    "max_retries": 2,
    "max_redirects": 5,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "max_depth": 4,
    "concurrency": 32,
    "concurrency_per_host": 32,
    "progress_interval": 60.0,
    "autothrottle": False,  # its per-host delays would make a 10 s crawl take 40 s
    "write_interval": 0.02,
}
"""The settings `FAULTS` assumes (timeout 2 s, 1 MiB, 2 retries, 5 redirects), made quick."""

WEIRD_OUTCOMES: Final[dict[str, tuple[str, str | None] | None]] = {
    "": None,  # not a link: left out by extract_links
    "   ": None,
    "#fragment-only": None,  # the page itself
    "javascript:void(0)": ("skipped", "scheme"),
    "mailto:a@b.c": ("skipped", "scheme"),
    "tel:+123": ("skipped", "scheme"),
    "//{host}/ok": ("done", None),
    "http://bücher.example/": ("skipped", "offsite"),
    UNICODE_PATH: ("done", None),
    LONG_URL_PATH: ("skipped", "url_too_long"),
    "http://127.0.0.1:99999/": ("skipped", "invalid_url"),
    "http://[::1]:1/": ("skipped", "offsite"),
    "../../../../ok": ("done", None),  # `..` above the root stays at the root
    "/ok": ("done", None),
}
"""What each href on /links/weird ends as: (state, reason), or None for no request at all."""

TRAP_STARTS: Final = ("/trap/calendar?month=1&year=2024", "/trap/session?sid=0", "/trap/a/")


@pytest.fixture
async def fault_server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


def outcomes(db: Target) -> dict[str, tuple[str, str | None]]:
    """Each request's URL with its state and reason (the kind alone, for failures)."""
    return {
        str(url): (str(state), str(reason or "").split(":", 1)[0] or None)
        for url, state, reason in rows(db, "SELECT url, state, reason FROM requests")
    }


async def test_every_fault_ends_in_its_expected_state(
    fault_server: FaultServer, database: Target, run_cli: RunCli
) -> None:
    spider = with_start_urls(FollowAllSpider, [fault_server.url("/")])
    async with asyncio.timeout(60):  # no fault may hang the crawl past its timeouts (~10 s)
        await crawl(spider, db=database, settings=HOSTILE_SETTINGS)
    got = outcomes(database)
    wrong = []
    for fault in FAULTS:
        url = canonical_url(fault_server.url(fault.path))
        if got.get(url) != (fault.expect_state, fault.expect_kind):
            wrong.append((fault.path[:60], got.get(url), (fault.expect_state, fault.expect_kind)))
    assert wrong == []
    stats = assert_crawl_invariant(database)
    assert stats["errors"]["timeout"] >= 4
    assert fault_server.hits("/flaky?fail=2&status=503") == 3

    report = await run_cli("stats", str(database), "--format", "json")
    assert report.code == 0, report.stderr
    summary = json.loads(report.stdout)
    assert set(summary["errors_by_kind"]) == {
        *("timeout", "connection", "protocol", "http_status", "too_large", "redirect")
    }
    assert summary["errors_by_kind"] == stats["errors"]
    assert set(summary["skipped_by_reason"]) == {
        *("scheme", "offsite", "invalid_url", "url_too_long", "depth", "trap"),
        "redirect_target",  # where the followed redirects landed (fetched once, through them)
    }
    assert summary["failed_by_reason"]["timeout"] == 3


async def test_every_weird_href_ends_in_a_recorded_state(
    fault_server: FaultServer, database: Target
) -> None:
    assert set(WEIRD_OUTCOMES) == set(WEIRD_HREFS)  # a new href needs an expectation here
    page = fault_server.url("/links/weird")
    spider = with_start_urls(FollowAllSpider, [page])
    await crawl(spider, db=database, settings={**HOSTILE_SETTINGS, "max_depth": 1})
    assert_crawl_invariant(database)
    got = outcomes(database)
    host = page.split("/")[2]
    expected_links: set[str] = set()
    wrong = []
    for href, expected in WEIRD_OUTCOMES.items():
        if expected is None:
            continue
        href = href.replace("{host}", host)
        url = try_canonical_url(href, page) or href.strip()  # as extract_links resolves it
        expected_links.add(url)
        if got.get(url) != expected:
            wrong.append((href[:60], got.get(url), expected))
    assert wrong == []
    stored = rows(database, "SELECT to_url FROM links WHERE from_url = ?", (page,))
    assert {str(r[0]) for r in stored} == expected_links


async def test_bombs_and_huge_bodies_stop_at_max_size_without_expanding(
    fault_server: FaultServer, database: Target
) -> None:
    paths = ["/gzip-bomb", "/deflate-bomb", "/brotli-bomb", "/big-chunked", "/html/long-line"]
    spider = with_start_urls(FollowAllSpider, [fault_server.url(p) for p in paths])
    tracemalloc.start()
    try:
        await crawl(spider, db=database, settings=HOSTILE_SETTINGS, fresh=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_crawl_invariant(database)
    assert rows(database, "SELECT DISTINCT state, substr(reason, 1, 9) FROM requests") == [
        ("failed", "too_large")
    ]
    # each bomb expands to 1 GiB; max_size is 1 MiB and five bodies are read at once
    assert peak < 32 * MIB, peak / MIB


async def test_spider_traps_stop_with_a_reason(
    fault_server: FaultServer, database: Target, run_cli: RunCli
) -> None:
    spider = with_start_urls(FollowAllSpider, [fault_server.url(p) for p in TRAP_STARTS])
    stats = await crawl(
        spider,
        db=database,
        settings={**HOSTILE_SETTINGS, "max_depth": 30, "max_pages_per_host": 40},
    )
    assert_crawl_invariant(database)
    assert stats["pages"] <= 40
    assert stats["skipped"]["trap"] >= 1
    assert stats["skipped"]["max_pages_per_host"] >= 1
    assert scalar(database, "SELECT max(length(url)) FROM pages") <= 2083
    deepest_a = scalar(
        database,
        "SELECT max(length(url) - length(replace(url, '/a', ''))) / 2 FROM pages "
        "WHERE url LIKE '%/trap/a/%'",
    )
    assert deepest_a == 2
    assert got_reason(database, "/trap/a/a/a/") == ("skipped", "trap")

    report = await run_cli("stats", str(database))
    assert report.code == 0, report.stderr
    skipped_table = report.stdout.split("skipped requests", 1)[1]
    assert "trap" in skipped_table
    assert "max_pages_per_host" in skipped_table


def got_reason(db: Target, path_suffix: str) -> tuple[str, str | None] | None:
    found = rows(db, "SELECT state, reason FROM requests WHERE url LIKE ?", (f"%{path_suffix}",))
    return (str(found[0][0]), found[0][1]) if found else None


async def test_each_trap_meets_its_own_limit_without_a_depth_limit(
    fault_server: FaultServer, database: Target
) -> None:
    spider = with_start_urls(FollowAllSpider, [fault_server.url(p) for p in TRAP_STARTS])
    settings = {**HOSTILE_SETTINGS, "max_depth": 0, "max_url_length": 64}
    stats = await crawl(spider, db=database, settings={**settings, "max_pages_per_host": 100})
    assert_crawl_invariant(database)
    assert stats["pages"] <= 100
    by_trap: dict[str, set[str]] = {}
    for url, reason in rows(database, "SELECT url, reason FROM requests WHERE state = 'skipped'"):
        by_trap.setdefault(str(url).split("/trap/", 1)[1][0], set()).add(str(reason))
    # /trap/session grows its sid until the URL is too long, /trap/a/ repeats its segment,
    # and the endless calendar keeps a plausible shape until the host's budget is spent
    assert by_trap == {"s": {"url_too_long"}, "a": {"trap"}, "c": {"max_pages_per_host"}}


async def test_per_host_budget_is_per_host_and_a_resume_with_more_reopens(database: Target) -> None:
    async with (
        TestServer(follow_app(pages=60), host="127.0.0.1") as one,
        TestServer(follow_app(pages=60), host="127.0.0.2") as two,
    ):
        starts = [str(one.make_url("/p/0")), str(two.make_url("/p/0"))]
        spider = with_start_urls(FollowAllSpider, starts)
        for budget, expected in ((20, 20), (35, 35), (0, 60)):
            settings = {**HOSTILE_SETTINGS, "max_depth": 0, "max_pages_per_host": budget}
            await crawl(spider, db=database, settings=settings)
            assert_all_accounted_for(database)
            admitted = rows(
                database,
                "SELECT host, count(*) FROM requests WHERE state != 'skipped' "
                "GROUP BY host ORDER BY host",
            )
            assert admitted == [("127.0.0.1", expected), ("127.0.0.2", expected)]
            per_host_skips = scalar(
                database, "SELECT count(*) FROM requests WHERE reason = 'max_pages_per_host'"
            )
            assert (per_host_skips > 0) == (budget != 0)
        assert scalar(database, "SELECT count(*) FROM pages") == 120


async def test_hostile_callbacks_are_recorded_and_the_crawl_goes_on(
    follow_site: BaseTestServer,
    database: Target,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spider = with_start_urls(CallbackFaultsSpider, [str(follow_site.make_url("/"))])
    times: dict[str, float] = {}
    monkeypatch.setattr(CallbackFaultsSpider, "times", times)
    with caplog.at_level(logging.WARNING, logger="crawler"):
        await crawl(spider, db=database, settings={"store_links": False})
    assert_crawl_invariant(database)
    assert rows(database, "SELECT DISTINCT state FROM requests") == [("done",)]
    errors = rows(database, "SELECT callback, kind, message FROM errors ORDER BY id")
    by_callback = {(str(c), str(k)) for c, k, _ in errors}
    assert by_callback == {
        ("raises", "spider"),
        ("garbage", "spider"),
        ("garbage", "item"),
        ("blocks", "blocking"),
    }
    (blocking,) = [str(m) for _, k, m in errors if k == "blocking"]
    said = re.fullmatch(
        r"callback blocks blocked the event loop for (\d+\.\d) s; "
        r"move blocking work to asyncio\.to_thread",
        blocking,
    )
    assert said is not None, blocking
    # At least the time it held the loop, at most the time since the spider opened (the
    # detector counts from the loop's last heartbeat, which a loaded machine may delay); in
    # the message's precision.
    assert times["held"] >= BLOCK_SECONDS
    at_least, at_most = times["held"], times["resumed"] - times["opened"]
    assert float(f"{at_least:.1f}") <= float(said[1]) <= float(f"{at_most:.1f}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "callback blocks blocked the event loop" in m
        and m.endswith(f"{follow_site.make_url('/p/2')})")
        for m in warnings
    ), warnings
    items = sorted(json.loads(r[0]).popitem() for r in rows(database, "SELECT data FROM items"))
    assert items == [
        ("blocked", True),
        ("fine", True),
        ("kept", "before the exception"),
        ("waited", True),
    ]
    assert scalar(database, "SELECT count(*) FROM requests WHERE url LIKE '%/p/10'") == 1


FLOOD_DRIVER: Final = """
import asyncio, json, resource, sys
from crawler import crawl
from crawler.cli.common import with_start_urls
from tests.hostile_spiders import FloodSpider

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = peak_kib()
spider = with_start_urls(FloodSpider, [sys.argv[1]])
settings = {"max_pages": 50, "store_links": False, "autothrottle": False}
stats = asyncio.run(crawl(spider, db=sys.argv[2], settings=settings))
print(json.dumps({"before": before, "after": peak_kib(), "stats": stats}))
"""


@pytest.mark.timeout(200)
async def test_a_callback_yielding_300k_requests_runs_in_bounded_memory(
    follow_site: BaseTestServer, database: Target
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLOOD_DRIVER,
        str(follow_site.make_url("/")),
        str(database),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Memory is what this checks, not speed: ~50 s on a loaded 2-core machine, either backend
    async with asyncio.timeout(180):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert_crawl_invariant(database)
    growth_mib = (report["after"] - report["before"]) / 1024
    assert growth_mib < 150, growth_mib
    flood = scalar(database, "SELECT count(*) FROM requests WHERE url LIKE '%/p/%'")
    assert flood == FLOOD_REQUESTS  # every generated URL is recorded
    assert rows(database, "SELECT state, count(*) FROM requests GROUP BY state ORDER BY state") == [
        ("done", 50),
        ("skipped", FLOOD_REQUESTS + 1 - 50),
    ]
    assert report["stats"]["skipped"]["max_pages"] == FLOOD_REQUESTS + 1 - 50
