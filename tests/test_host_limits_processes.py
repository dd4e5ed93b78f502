"""A host's delay holds crawl-wide with `crawl --processes 2` on one SQLite file: two requests
of a host with `delay_per_host` or a robots.txt `Crawl-delay` arrive at least the delay
apart, whichever processes send them (crawler.store.pacing); and a run alone on its file
takes no turns. The server records when each request of each host arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import aiosqlite
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler.store.backends import open_store
from crawler.store.pacing import PEERS_EVERY, TURN_MARGIN, SqlitePacer
from tests.conftest import scalar
from tests.sites import html_page
from tests.test_host_memory import host_of_request
from tests.test_host_memory_processes import crawl_in_processes

PAGES = 24
DELAY = 0.3
SETTINGS = ("concurrency=4", "concurrency_per_host=1", "autothrottle=false")
"""A process claims at most 12 requests of a host (crawler.frontier.feeder): each holds some."""
ARRIVALS = web.AppKey("arrivals", dict[str, list[float]])


def leaves_app(robots: str = "") -> web.Application:
    """Any host: `/robots.txt` answers `robots` (a 404 when empty), every other path is a
    page without links, answered after 20 ms; arrivals are recorded per host (robots.txt
    apart)."""
    app = web.Application()
    arrivals: dict[str, list[float]] = defaultdict(list)
    app[ARRIVALS] = arrivals

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/robots.txt":
            return web.Response(text=robots, status=200 if robots else 404)
        arrivals[host_of_request(request)].append(time.monotonic())
        await asyncio.sleep(0.02)
        return web.Response(text=html_page(""), content_type="text/html")

    app.router.add_get("/{tail:.*}", handle)
    return app


def gaps(times: list[float]) -> list[float]:
    """The seconds between consecutive arrivals."""
    ordered = sorted(times)
    return [round(b - a, 3) for a, b in pairwise(ordered)]


@pytest.mark.parametrize(
    ("robots", "settings"),
    [
        ("", (f"delay_per_host={DELAY}",)),
        (f"User-agent: *\nCrawl-delay: {DELAY}\n", ()),
    ],
    ids=["delay_per_host", "crawl_delay"],
)
async def test_a_hosts_delay_holds_across_processes(
    tmp_path: Path, robots: str, settings: tuple[str, ...]
) -> None:
    database = tmp_path / "crawl.db"
    app = leaves_app(robots)
    async with TestServer(app, host="127.0.0.1") as server:
        # every page a start URL: both processes hold requests of the host from the start
        start = [f"http://a.test:{server.port}/p{n}" for n in range(PAGES)]
        await crawl_in_processes(database, start, 4096, *SETTINGS, *settings)
    assert scalar(database, "SELECT count(*) FROM pages") == PAGES
    assert scalar(database, "SELECT count(DISTINCT crawl_id) FROM pages") == 2
    times = app[ARRIVALS]["a.test"]
    assert len(times) == PAGES
    # each process alone spaces its own requests; together they sent some about twice as
    # often: each process's pages are sure to be far apart only crawl-wide
    assert min(gaps(times)) >= 0.8 * DELAY, gaps(times)


async def test_a_run_takes_turns_only_while_another_shares_its_file(tmp_path: Path) -> None:
    path = tmp_path / "crawl.db"
    store = await open_store(path)
    other = await open_store(path)
    pacers: list[SqlitePacer] = []
    try:
        run_id = await store.start_run(spider="s", settings={}, fresh=False)
        other_id = await other.start_run(spider="s", settings={}, fresh=False)
        async with aiosqlite.connect(path) as conn:
            await conn.execute("INSERT INTO hosts (host, admitted) VALUES ('a.test', 1)")
            await conn.commit()
        await other.end_run(other_id, status="finished", reason="done", stats={})

        # alone (the other run finished) and past its grace: no turn, no wait
        alone = SqlitePacer(path, run_id, grace=0.0)
        pacers.append(alone)
        started = time.monotonic()
        for _ in range(3):
            await alone("a.test", 5.0)
        assert time.monotonic() - started < 5.0
        assert scalar(path, "SELECT not_before FROM hosts WHERE host = 'a.test'") is None

        # in its grace (processes started together), or with another live run: turns
        for pacer in (SqlitePacer(path, run_id), alone):
            pacers.append(pacer)
            if pacer is alone:
                await other.start_run(spider="s", settings={}, fresh=False)
                await asyncio.sleep(PEERS_EVERY)  # its next look sees the other run
            before = time.time()
            await pacer("a.test", 0.2)
            started = time.monotonic()
            await pacer("a.test", 0.2)
            assert time.monotonic() - started >= 0.2
            not_before = scalar(path, "SELECT not_before FROM hosts WHERE host = 'a.test'")
            # two turns on from `before` (SQLite reads the time to the millisecond)
            assert not_before >= before + 2 * (0.2 + TURN_MARGIN) - 0.01
    finally:
        for pacer in pacers:
            await pacer.close()
        await other.close()
        await store.close()
