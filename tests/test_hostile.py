"""The hostile web: crawl every fault the fault server has, and account for every URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crawler import crawl
from crawler.cli_common import with_start_urls
from crawler.links import canonical_url
from tests.conftest import rows, scalar
from tests.faults import FAULTS, FaultServer
from tests.invariants import assert_crawl_invariant
from tests.spiders import FollowAllSpider

HOSTILE_SETTINGS = {
    "request_timeout": 2.0,
    "max_size": 1024 * 1024,
    "max_retries": 2,
    "max_redirects": 5,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "max_depth": 4,
    "concurrency": 32,
    "progress_interval": 60.0,
}


@pytest.fixture
async def fault_server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


async def test_every_fault_ends_in_its_expected_state(
    fault_server: FaultServer, db_path: Path
) -> None:
    spider = with_start_urls(FollowAllSpider, [fault_server.url("/")])
    await crawl(spider, db=db_path, settings=HOSTILE_SETTINGS)
    outcomes = {
        str(url): (str(state), str(reason or "").split(":", 1)[0] or None)
        for url, state, reason in rows(db_path, "SELECT url, state, reason FROM requests")
    }
    wrong = []
    for fault in FAULTS:
        url = canonical_url(fault_server.url(fault.path))
        got = outcomes.get(url)
        if got != (fault.expect_state, fault.expect_kind):
            wrong.append((fault.path[:60], got, (fault.expect_state, fault.expect_kind)))
    assert wrong == []
    stats = assert_crawl_invariant(db_path)
    assert stats["errors"]["timeout"] >= 4
    assert fault_server.hits("/flaky?fail=2&status=503") == 3


async def test_spider_traps_stop_with_a_reason(fault_server: FaultServer, db_path: Path) -> None:
    starts = [
        fault_server.url(p)
        for p in ("/trap/calendar?month=1&year=2024", "/trap/session?sid=0", "/trap/a/")
    ]
    spider = with_start_urls(FollowAllSpider, starts)
    stats = await crawl(
        spider,
        db=db_path,
        settings={**HOSTILE_SETTINGS, "max_depth": 30, "max_pages_per_host": 150},
    )
    assert_crawl_invariant(db_path)
    assert stats["pages"] <= 150
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE reason = 'trap'") >= 1
    assert scalar(db_path, "SELECT max(length(url)) FROM pages") <= 2083
    deepest_a = scalar(
        db_path,
        "SELECT max(length(url) - length(replace(url, '/a', ''))) / 2 FROM pages WHERE url LIKE '%/trap/a/%'",
    )
    assert deepest_a <= 3
