"""Per-host limits hold crawl-wide with `crawl --processes 2` on one SQLite file: two requests
of a host with `delay_per_host` or a robots.txt `Crawl-delay` arrive at least the delay
apart, whichever processes send them (crawler.store.pacing), and a run alone on its file
takes no turns; no more than `concurrency_per_host` requests of a host are in progress at
once, across processes (crawler.store.claims). The server records when each request of each
host arrives, and how many are in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import aiosqlite
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler.settings import load_settings
from crawler.store.backends import open_store
from crawler.store.claims import _CLAIM, Claims
from crawler.store.migrations import MIGRATIONS
from crawler.store.pacing import PEERS_EVERY, TURN_MARGIN, SqlitePacer
from crawler.store.runs import start_run
from crawler.store.schema import APPLICATION_ID, SCHEMA_VERSION, _statements, open_database
from tests.conftest import scalar
from tests.databases import rows
from tests.polite_sites import Gauge
from tests.sites import html_page
from tests.test_host_memory import host_of_request
from tests.test_host_memory_processes import crawl_in_processes

PAGES = 24
DELAY = 0.3
SETTINGS = ("concurrency=1", "concurrency_per_host=100", "autothrottle=false")
"""A process claims 12 requests of a host at most (crawler.frontier.feeder), and the cap
leaves the other process room: each holds some."""
ARRIVALS = web.AppKey("arrivals", dict[str, list[float]])
IN_PROGRESS = web.AppKey("in_progress", dict[str, Gauge])
_TURN = re.compile(r"crawler\.store\.pacing: (\S+): crawl-wide turn at ([0-9.]+) ")


def leaves_app(robots: str = "", latency: float = 0.02) -> web.Application:
    """Any host: `/robots.txt` answers `robots` (a 404 when empty), every other path is a
    page without links, answered after `latency` seconds; arrivals and requests in progress
    are recorded per host (robots.txt apart)."""
    app = web.Application()
    arrivals: dict[str, list[float]] = defaultdict(list)
    in_progress: dict[str, Gauge] = defaultdict(Gauge)
    app[ARRIVALS], app[IN_PROGRESS] = arrivals, in_progress

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/robots.txt":
            return web.Response(text=robots, status=200 if robots else 404)
        host = host_of_request(request)
        arrivals[host].append(time.time())  # the turns' clock
        in_progress[host].enter()
        try:
            await asyncio.sleep(latency)
        finally:
            in_progress[host].leave()
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
    # The test needs both processes to hold requests of the host, so every page is a start
    # URL and each process claims at most half of them. But a delayed host's next turn is in
    # `hosts.not_before`, which other processes' claims skip as a pause: a process whose
    # first claim comes after the other's first turn (a loaded machine can start it late)
    # gets none of the host. The crawl is then run again, at most 3 times in all; each run's
    # pace is checked.
    for attempt in range(3):
        database = tmp_path / f"crawl{attempt}.db"
        processes = await paced_crawl(database, robots, settings)
        if processes == 2:
            break
    assert processes == 2  # both processes fetched the host


async def paced_crawl(database: Path, robots: str, settings: tuple[str, ...]) -> int:
    """Crawl the `PAGES` pages of one delayed host with two processes; check that their
    turns and the site's arrivals kept the delay; return how many processes fetched pages."""
    app = leaves_app(robots)
    async with TestServer(app, host="127.0.0.1") as server:
        start = [f"http://a.test:{server.port}/p{n}" for n in range(PAGES)]
        stderr = await crawl_in_processes(
            database, start, 4096, *SETTINGS, *settings, options=("--log-level", "DEBUG")
        )
    assert scalar(database, "SELECT count(*) FROM pages") == PAGES
    arrivals = sorted(app[ARRIVALS]["a.test"])
    assert len(arrivals) == PAGES
    # The turns both processes took are the crawl's pace, and no request came before its
    # turn (a robots.txt fetch, which the site does not count, may take a turn too).
    turns = sorted(float(at) for host, at in _TURN.findall(stderr) if host.startswith("a.test"))
    assert len(turns) >= PAGES, turns
    assert min(gaps(turns)) >= DELAY, gaps(turns)
    assert all(turn <= arrival + 0.002 for turn, arrival in zip(turns, arrivals, strict=False))
    # Each process alone spaced only its own requests: together they sent some 0-25 ms
    # apart. The site's gaps are the turns' less each request's time on the way (a loaded
    # machine may stall a process's loop between its turn and its request): a loose floor.
    assert min(gaps(arrivals)) >= DELAY / 3, gaps(arrivals)
    return int(scalar(database, "SELECT count(DISTINCT crawl_id) FROM pages"))


async def test_concurrency_per_host_holds_across_processes(tmp_path: Path) -> None:
    database = tmp_path / "crawl.db"
    app = leaves_app(latency=0.1)
    async with TestServer(app, host="127.0.0.1") as server:
        # 40 pages of each host, each process able to claim 20 of a host (each process
        # alone has 2 of a host in progress at once, so on main they had 4)
        start = [f"http://{h}.test:{server.port}/p{n}" for n in range(40) for h in "ab"]
        settings = ("concurrency=8", "concurrency_per_host=2", "autothrottle=false")
        await crawl_in_processes(database, start, 4096, *settings)
    assert scalar(database, "SELECT count(*) FROM pages") == 80
    peaks = {host: gauge.peak for host, gauge in app[IN_PROGRESS].items()}
    assert peaks == {"a.test": 2, "b.test": 2}


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


FIRST_RUN = 1


@contextlib.asynccontextmanager
async def two_runs(path: Path, **settings: object) -> AsyncIterator[tuple[Claims, Claims]]:
    """The claims of two runs (ids 1 and 2) on a new file that holds 30 pending requests of
    a.test."""
    await (await open_store(path)).close()
    config = load_settings(overrides=settings).settings
    first, second = await open_database(path), await open_database(path)
    try:
        one, two = [
            Claims(
                conn,
                run_id=await start_run(conn, spider="s", settings={}, fresh=False),
                settings=config,
            )
            for conn in (first, second)
        ]
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.executemany(
                "INSERT INTO requests (url, fingerprint, host, depth, state, crawl_id, "
                "discovered_at) VALUES (?, ?, 'a.test', 0, 'pending', 1, 'now')",
                [(f"http://a.test/{n}", n) for n in range(30)],
            )
        yield one, two
    finally:
        await first.close()
        await second.close()


async def claim(claims: Claims) -> int:
    """How many requests of a.test a claim leases (10 at most: the run's own limit)."""
    return len((await claims.claim(20, held={}, per_host=10)).claimed)


def finish(path: Path, run_id: int, count: int) -> None:
    """Another run ends `count` of its leases (the requests are done)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE requests SET state = 'done', lease_owner = NULL, lease_expires = NULL "
            "WHERE id IN (SELECT id FROM requests WHERE lease_owner = ? LIMIT ?)",
            (run_id, count),
        )


async def test_claims_share_a_hosts_cap_among_the_runs_that_hold_it(tmp_path: Path) -> None:
    path = tmp_path / "crawl.db"
    async with two_runs(path, concurrency=16, concurrency_per_host=4) as (one, two):
        assert await claim(one) == 10  # nobody else holds a.test: its own limit applies
        assert await claim(two) == 0  # the first run may have 4 in flight: the cap
        finish(path, FIRST_RUN, 9)
        assert await claim(two) == 3  # 4 minus the one the first run holds
        assert await claim(one) == 0  # together at the cap
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE requests SET lease_expires = 0 WHERE lease_owner = 2")
        assert await claim(one) == 10  # the second run's leases ran out: alone again


@pytest.mark.parametrize(("cap", "second"), [(4, 10), (3, 1)])
async def test_a_cap_above_one_runs_most_in_flight_lets_runs_share_a_host(
    tmp_path: Path, cap: int, second: int
) -> None:
    path = tmp_path / "crawl.db"
    async with two_runs(path, concurrency=2, concurrency_per_host=cap) as (one, two):
        assert await claim(one) == 10  # 2 of them in flight at most
        # with a cap of 4, 2 more in flight at most; of 3, one more
        assert await claim(two) == second


async def test_a_claim_counts_a_hosts_leases_by_index_on_a_migrated_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as old:
        for script in MIGRATIONS[:10]:
            for statement in _statements(script):
                old.execute(statement)
        old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        old.execute("PRAGMA user_version = 10")
    await (await open_database(path)).close()
    assert scalar(path, "PRAGMA user_version") == SCHEMA_VERSION
    sql = _CLAIM.format(order="priority DESC, id")
    plan = " ".join(
        str(row[3])
        for row in rows(path, f"EXPLAIN QUERY PLAN {sql}", (1, 0.0, "a.test", 0.0, 0.0, 5, 2, 2))
    )
    # the host's leased rows, not its pending ones (a million, for a large site)
    assert "INDEX requests_host_leases (host=?" in plan, plan
