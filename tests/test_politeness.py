"""Politeness against several local hosts (127.0.0.2, .3, …), proven on the servers' side
(their own timestamps and counts of requests in progress) and by the turns the crawler took
at each host: delays are checked on those turns, orders and counts on the servers' logs, so
that a loaded machine's stalls cannot fail a test (see `record_turns`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.fetch.politeness import Hosts, HostState, Slot
from tests.conftest import RunCli, Target, rows, scalar
from tests.polite_sites import VISITS, Gauge, Visits, pages_app
from tests.spiders import FollowAllSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}
HOLD = 30.0
"""Seconds a page held for an event of the test waits at most: far longer than the event
takes on a loaded machine, short enough that the failure it shows is not the suite's
timeout."""


@contextlib.asynccontextmanager
async def serve(*apps: web.Application) -> AsyncIterator[list[TestServer]]:
    """Serve each app on its own loopback address: 127.0.0.2, 127.0.0.3, …"""
    servers = [TestServer(app, host=f"127.0.0.{i}") for i, app in enumerate(apps, start=2)]
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        yield servers


def visits(server: TestServer) -> Visits:
    return server.app[VISITS]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def record_turns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[float]]:
    """The start of every attempt's turn at its host (`Slot.started`, on time.monotonic like
    the servers' times), by host, in the order they were taken.

    The crawler's own pace: a server's gaps also carry each request's time on the way (a new
    connection, a loaded machine stalling the event loop), which can make two requests that
    took their turns `delay` apart arrive closer together."""
    turns: defaultdict[str, list[float]] = defaultdict(list)
    enter = Slot.__aenter__

    async def entered(slot: Slot) -> Slot:
        taken = await enter(slot)
        turns[slot._state.host].append(taken.started)
        return taken

    monkeypatch.setattr(Slot, "__aenter__", entered)
    return turns


class Outcome(NamedTuple):
    """One response as the host's throttle took it, and what it decided."""

    at: float
    status: int
    latency: float
    delay: float
    limit: int


def record_outcomes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Outcome]]:
    """Each response's outcome, by host, in the order the throttle took them: what the
    crawler measured and decided, whatever the load (on the hosts' clock, like the turns)."""
    outcomes: defaultdict[str, list[Outcome]] = defaultdict(list)
    leave = Hosts._exit

    def left(hosts: Hosts, state: HostState, slot: Slot, failure: BaseException | None) -> None:
        leave(hosts, state, slot, failure)
        if failure is None and slot.status is not None:
            at = hosts._clock()  # just after the throttle read it: its latency is >= the one used
            throttle = state.throttle
            outcome = Outcome(at, slot.status, at - slot.started, throttle.delay, throttle.limit)
            outcomes[state.host].append(outcome)

    monkeypatch.setattr(Hosts, "_exit", left)
    return outcomes


def assert_paced(turns: list[float], arrivals: list[float], delay: float) -> None:
    """Each request took its turn at least `delay` after the one before, and reached its
    server only after its turn (one turn per request: retries would show as extra turns)."""
    assert len(turns) == len(arrivals)
    assert min(gaps(turns)) >= delay - 1e-9  # (float rounding)
    assert all(turn <= arrival for turn, arrival in zip(turns, sorted(arrivals), strict=True))


def host(server: TestServer) -> str:
    return str(server.host)


def spider_for(*servers: BaseTestServer) -> type[FollowAllSpider]:
    return with_start_urls(FollowAllSpider, [str(s.make_url("/")) for s in servers])  # type: ignore[return-value]


async def test_concurrency_per_host_caps_each_host_while_hosts_run_side_by_side(
    database: Target,
) -> None:
    across = Gauge()
    apps = [pages_app(12, latency=0.1, shared=across) for _ in range(3)]
    async with serve(*apps) as servers:
        settings = {**FAST, "concurrency": 8, "concurrency_per_host": 2, "autothrottle": False}
        stats = await crawl(spider_for(*servers), db=database, settings=settings)
    assert stats["pages"] == 3 * 13
    assert [visits(server).gauge.peak for server in servers] == [2, 2, 2]
    assert across.peak > 2  # the hosts were crawled at the same time, not one after another


async def test_delay_per_host_spaces_the_requests_each_host_receives(
    database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = record_turns(monkeypatch)
    async with serve(pages_app(5), pages_app(5)) as servers:
        settings = {**FAST, "concurrency": 8, "delay_per_host": 0.2, "autothrottle": False}
        stats = await crawl(spider_for(*servers), db=database, settings=settings)
    assert stats["pages"] == 12
    assert sorted(turns) == sorted(host(server) for server in servers)
    for server in servers:
        arrivals = visits(server).times()
        assert len(arrivals) == 7  # robots.txt, the index and 5 pages
        assert_paced(turns[host(server)], arrivals, 0.2)


async def test_crawl_delay_in_robots_txt_is_honoured(
    database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    robots = "User-agent: *\nCrawl-delay: 0.3\n"
    turns = record_turns(monkeypatch)
    async with serve(pages_app(4, robots=robots)) as (server,):
        settings = {**FAST, "concurrency": 8}
        stats = await crawl(spider_for(server), db=database, settings=settings)
    assert stats["pages"] == 5
    # robots.txt first, then each request 0.3 s after the one before
    arrivals = visits(server).times()
    assert len(arrivals) == 6
    assert_paced(turns[host(server)], arrivals, 0.3)
    assert rows(database, "SELECT crawl_delay, outcome FROM robots") == [(0.3, "rules")]


async def test_crawl_delay_is_capped_by_crawl_delay_max(
    database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    robots = "User-agent: *\nCrawl-delay: 3600\n"
    turns = record_turns(monkeypatch)
    async with serve(pages_app(3, robots=robots)) as (server,):
        settings = {**FAST, "crawl_delay_max": 0.15, "autothrottle": False}
        # an hour's delay would not end before this (3 gaps of 0.15 s are due)
        async with asyncio.timeout(60):
            stats = await crawl(spider_for(server), db=database, settings=settings)
    assert stats["pages"] == 4
    arrivals = visits(server).times()
    assert len(arrivals) == 5  # robots.txt, the index and 3 pages
    assert_paced(turns[host(server)], arrivals, 0.15)


async def test_429_pauses_only_that_host_which_then_speeds_back_up(
    database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    throttled = pages_app(12, latency=0.02, too_many={"/p/2": 1}, retry_after="1")
    other = pages_app(40, latency=0.05)
    turns = record_turns(monkeypatch)
    outcomes = record_outcomes(monkeypatch)
    async with serve(throttled, other) as (host_a, host_b):
        settings = {"progress_interval": 60.0, "concurrency": 4, "concurrency_per_host": 2}
        stats = await crawl(spider_for(host_a, host_b), db=database, settings=settings)
    assert stats["pages"] == 13 + 41
    assert stats["requests_failed"] == 0
    assert rows(database, "SELECT kind, message FROM errors") == [("http_status", "HTTP 429")]
    answered_429 = next(at for at, _, status in visits(host_a).answers if status == 429)
    after = [at for at in visits(host_a).times() if at > answered_429]
    assert after[0] - answered_429 >= 0.95  # nothing reached host A until Retry-After had passed
    # Then it was slowed down: at most one in flight, its delay at least backoff_base (0.5 s)
    # and, once a request in flight before the 429 succeeded, at least halfway to that…
    outcome = outcomes[host(host_a)]
    paused = next(index for index, seen in enumerate(outcome) if seen.status == 429)
    slowed = outcome[paused]
    assert slowed.delay >= 0.5 and slowed.limit == 1
    resumed = [turn for turn in turns[host(host_a)] if turn > slowed.at]
    assert resumed[1] - resumed[0] >= 0.2
    # … and each success pulled the delay halfway back to the host's response time: from
    # the slowed delay D, n successes of latencies up to M leave it at most M + D / 2**n. A
    # delay that stayed slowed fails this whenever the host answers in under 0.5 s, and no
    # stall of a loaded machine can fail it: the bound is made of the times measured.
    since = outcome[paused + 1 :]
    assert len(since) >= 8 and all(seen.status == 200 for seen in since)
    slowest = max(seen.latency for seen in since)
    assert since[-1].delay <= slowest + slowed.delay / 2 ** len(since) + 1e-9
    assert since[-1].limit == 2  # its concurrency back at the cap
    during = [at for at in visits(host_b).times() if answered_429 < at < answered_429 + 0.95]
    assert len(during) >= 2  # host B went on meanwhile


async def test_a_slow_host_does_not_hold_up_a_fast_one(database: Target) -> None:
    """The slow host's pages answer only once the fast host has served all its pages (or
    after HOLD, the failure): with the slow host's requests holding every worker, the fast
    host would not be served until then."""
    fast_served = 0
    fast_done = asyncio.Event()
    held_too_long = False

    async def count_fast() -> None:
        nonlocal fast_served
        fast_served += 1
        if fast_served == 30:
            fast_done.set()

    async def until_the_fast_host_is_done() -> None:
        nonlocal held_too_long
        try:
            async with asyncio.timeout(HOLD):
                await fast_done.wait()
        except TimeoutError:
            held_too_long = True

    slow = pages_app(6, hold=until_the_fast_host_is_done)
    fast = pages_app(30, hold=count_fast)
    async with serve(slow, fast) as (slow_server, fast_server):
        settings = {**FAST, "concurrency": 4, "concurrency_per_host": 2}
        settings["request_timeout"] = 2 * HOLD  # a held page is slow, not failed
        # the slow host's links are discovered first
        stats = await crawl(spider_for(slow_server, fast_server), db=database, settings=settings)
    assert stats["pages"] == 7 + 31
    assert stats["requests_failed"] == 0
    assert not held_too_long  # the fast host went on while two slow pages were in flight
    slow_pages = [at for at, path, _ in visits(slow_server).answers if path.startswith("/p/")]
    fast_pages = [at for at, path, _ in visits(fast_server).answers if path.startswith("/p/")]
    assert len(fast_pages) == 30
    assert max(fast_pages) < min(slow_pages)


async def test_a_host_with_a_long_queue_does_not_delay_the_others(database: Target) -> None:
    """One FIFO queue in discovery order would fetch all 40 pages of the first host first."""
    crowded = pages_app(40, latency=0.05)
    other = pages_app(3)
    async with serve(crowded, other) as (crowded_server, other_server):
        settings = {
            **FAST,
            "concurrency": 4,
            "concurrency_per_host": 1,
            "autothrottle": False,
            "queue_window": 20,
        }
        await crawl(spider_for(crowded_server, other_server), db=database, settings=settings)
    other_done = max(at for at, path, _ in visits(other_server).answers if path.startswith("/p/"))
    crowded_pages = [at for at, p, _ in visits(crowded_server).answers if p.startswith("/p/")]
    assert sum(1 for at in crowded_pages if at < other_done) < 10


async def test_every_skip_is_counted_in_the_summary_and_the_table(database: Target) -> None:
    robots = "User-agent: *\nDisallow: /p/1\n"
    async with serve(pages_app(3, robots=robots)) as (server,):
        stats = await crawl(spider_for(server), db=database, settings={**FAST, "max_pages": 3})
    table = dict(
        rows(database, "SELECT reason, count(*) FROM requests WHERE state = 'skipped' GROUP BY 1")
    )
    assert stats["skipped"]["robots"] == table["robots"] == 1
    assert stats["skipped"]["max_pages"] == table["max_pages"] == 1
    assert scalar(database, "SELECT count(*) FROM pages") == 2


@pytest.mark.parametrize("extra", [[], ["--concurrency", "3"]])
async def test_crawl_explain_prints_the_settings_and_does_not_crawl(
    run_cli: RunCli, tmp_path: Path, extra: list[str]
) -> None:
    db = tmp_path / "never.db"
    result = await run_cli(
        "crawl",
        "--explain",
        "tests.spiders:FollowAllSpider",
        "-o",
        str(db),
        "-s",
        "delay_per_host=0.5",
        "--start-url",
        "http://127.0.0.2:9/",
        *extra,
    )
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        "delay_per_host" in line and "0.5" in line and "command line" in line for line in lines
    )
    assert any("obey_robots" in line and "True" in line and "default" in line for line in lines)
    concurrency = next(line for line in lines if line.startswith("│ concurrency "))
    assert ("3" if extra else "16") in concurrency
    assert not db.exists()
