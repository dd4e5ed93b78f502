"""One crawl shared by worker processes on one PostgreSQL database (issue 18).

Each worker is a separate `crawler crawl SPIDER -o postgresql://...` command, as on separate
machines, with a User-Agent of its own, so the two-host site (tests/shared_site.py) counts on
the server side which worker fetched each page and how many requests each host had in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import pytest

from crawler.store.claims import LEASE_SECONDS
from tests.conftest import ROOT, Target
from tests.databases import rows, scalar
from tests.pgserver import PostgresServer
from tests.shared_site import SharedSite, shared_site

WORKERS: Final = 3
KILLS: Final = 20
CONCURRENCY: Final = 2
"""Each worker's in the fault test: what a killed one may have fetched and not stored."""

FAST_SETTINGS: Final = (
    *("-s", "autothrottle=false", "-s", "progress_interval=60", "-s", "write_interval=0.05"),
)
"""What every worker runs with: the site's artificial latency is not a reason to slow down."""


class Worker:
    """One `crawler crawl` command in a session of its own, its stderr in a file."""

    def __init__(self, process: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.process = process
        self.name = name
        self.log = log

    @classmethod
    async def start(
        cls, site: SharedSite, database: Target, name: str, tmp: Path, *extra: str
    ) -> Worker:
        log = tmp / f"{name}.log"
        urls = [arg for url in site.start_urls for arg in ("--start-url", url)]
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "crawler", "crawl", "tests.spiders:FollowAllSpider", "-o", str(database)),
                *urls,
                *("-s", f"user_agent={name}", *FAST_SETTINGS, *extra),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        return cls(process, name, log)

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait(self, limit: float) -> int:
        try:
            async with asyncio.timeout(limit):
                return await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
            raise AssertionError(f"{self.name} did not end in {limit} s: {self.stderr}") from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


async def run_workers(
    site: SharedSite, database: Target, tmp: Path, *extra: str, limit: float = 90.0
) -> list[Worker]:
    """Start WORKERS workers at once and wait until every one has ended with exit code 0."""
    workers = [
        await Worker.start(site, database, f"worker-{k}", tmp, *extra) for k in range(WORKERS)
    ]
    try:
        codes = [await worker.wait(limit) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, code in zip(workers, codes, strict=True):
        assert code == 0, f"{worker.name}: exit {code}: {worker.stderr}"
    return workers


async def open_once_running(gate: asyncio.Event, database: Target, runs: int) -> None:
    """Set `gate` once `runs` runs are recorded in `crawls` (the first worker creates the
    schema: until then the table is missing)."""
    while True:
        try:
            started = await asyncio.to_thread(scalar, database, "SELECT count(*) FROM crawls")
        except Exception:  # no schema yet
            started = 0
        if started >= runs:
            gate.set()
            return
        await asyncio.sleep(0.05)


_TURN = re.compile(r"crawler\.store\.pg_pacing: (\S+): crawl-wide turn at ([0-9.]+) ")


def turns_taken(worker: Worker) -> list[tuple[str, float]]:
    """(host, time.time()) of each crawl-wide turn a worker took, from its DEBUG log."""
    return [(match[1], float(match[2])) for match in _TURN.finditer(worker.stderr)]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def stored_pages(database: Target) -> Counter[str]:
    return Counter(str(url) for (url,) in rows(database, "SELECT url FROM pages"))


def stored_items(database: Target) -> Counter[tuple[str, str]]:
    """Items by page and data (JSON with sorted keys: jsonb orders them its own way)."""
    return Counter(
        (str(url), json.dumps(json.loads(data), sort_keys=True))
        for url, data in rows(database, "SELECT page_url, data FROM items")
    )


def assert_finished(database: Target, urls: set[str]) -> None:
    """Every page stored once, every request done, none leased, no link without a request."""
    pages = stored_pages(database)
    assert set(pages) == urls
    assert [url for url, count in pages.items() if count > 1] == []
    assert rows(database, "SELECT state, count(*) FROM requests GROUP BY state") == [
        ("done", len(urls))
    ]
    assert scalar(database, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
    assert (
        scalar(
            database, "SELECT count(*) FROM links WHERE to_url NOT IN (SELECT url FROM requests)"
        )
        == 0
    )


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Target:
    """A fresh database on the session's server (dropped with the cluster at the end)."""
    return postgres_server.create_database()


async def test_three_workers_fetch_exactly_the_pages_one_sqlite_crawl_fetches(
    postgres: Target, tmp_path: Path
) -> None:
    reference = tmp_path / "reference.db"
    async with shared_site(pages=150, delay=0.1) as site:
        alone = await Worker.start(site, reference, "alone", tmp_path)
        assert await alone.wait(90) == 0, alone.stderr
        sqlite_hits = Counter(hit.path for hit in site.hits)
        site.forget()
        # 4 requests at a time each, so that no worker can lease every slot of both hosts
        # (concurrency_per_host, 8) before the others have started
        await run_workers(site, postgres, tmp_path, "--concurrency", "4")
        served = site.hits_by_url()
        urls = site.all_urls()
    assert_finished(reference, urls)
    assert_finished(postgres, urls)
    assert stored_items(postgres) == stored_items(reference)
    # fetched once each, on the server's count, and the work was shared by all three
    assert {url: len(agents) for url, agents in served.items()} == dict.fromkeys(urls, 1)
    assert sum(sqlite_hits.values()) == len(urls)
    by_worker = Counter(agents[0] for agents in served.values())
    assert len(by_worker) >= 2, by_worker  # (a worker slow to start may find little left)
    runs = rows(postgres, "SELECT status, count(*) FROM crawls GROUP BY status")
    assert runs == [("finished", WORKERS)]


async def test_concurrency_per_host_holds_across_workers(postgres: Target, tmp_path: Path) -> None:
    async with shared_site(pages=60, delay=0.1) as site:
        await run_workers(
            site, postgres, tmp_path, "--concurrency", "8", "-s", "concurrency_per_host=2"
        )
        peak = dict(site.peak)
        urls = site.all_urls()
        served = site.hits_by_url()
    assert peak == {"127.0.0.1": 2, "127.0.0.2": 2}  # never more, and the limit was reached
    assert {url: len(agents) for url, agents in served.items()} == dict.fromkeys(urls, 1)
    assert_finished(postgres, urls)


async def test_delay_per_host_spaces_requests_across_workers(
    postgres: Target, tmp_path: Path
) -> None:
    delay = 0.3
    async with shared_site(pages=10, delay=0.0) as site:
        # no page is answered before all three workers run: one slow to start (a loaded
        # machine) would otherwise find a host's ten pages (~3.5 s of turns) fetched
        site.gate = asyncio.Event()
        opener = asyncio.create_task(open_once_running(site.gate, postgres, WORKERS))
        try:
            workers = await run_workers(
                site, postgres, tmp_path, "-s", f"delay_per_host={delay}", "--log-level", "DEBUG"
            )
        finally:
            opener.cancel()
        hits = list(site.hits)
        urls = site.all_urls()
    turns = [turn for worker in workers for turn in turns_taken(worker)]
    for host in {hit.host for hit in hits}:
        # Each worker on its own would space only its own requests: three of them would
        # take about three turns in each `delay`. The server's gaps are not the crawler's
        # pace (a worker's loop stalled between its turn and the request shortens the gap
        # it sees after the one before): the turns are, and no request came before its turn
        # (robots.txt, which the site does not count, takes turns too).
        taken = sorted(at for at_host, at in turns if at_host == host)
        arrivals = sorted(hit.started for hit in hits if hit.host == host)
        assert len(taken) >= len(arrivals) >= 10, (host, taken, arrivals)
        assert min(gaps(taken)) >= delay, (host, gaps(taken))
        assert all(turn <= arrival for turn, arrival in zip(taken, arrivals, strict=False))
        assert len({hit.agent for hit in hits if hit.host == host}) > 1
    assert_finished(postgres, urls)


async def test_max_pages_holds_for_the_whole_crawl(postgres: Target, tmp_path: Path) -> None:
    async with shared_site(pages=200, delay=0.02) as site:
        await run_workers(site, postgres, tmp_path, "-s", "max_pages=40")
        fetched = len(site.hits)
    assert scalar(postgres, "SELECT count(*) FROM pages") == 40
    assert fetched == 40
    assert scalar(postgres, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
    assert scalar(postgres, "SELECT count(*) FROM requests WHERE state = 'pending'") == 0


@pytest.mark.timeout(LEASE_SECONDS + 180)
async def test_kill_9_workers_and_a_server_restart_lose_and_repeat_nothing(
    postgres: Target, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """20 kill -9s of random workers, each restarted, and `pg_ctl restart -m fast` once,
    mid-crawl: every page is stored once, nothing is left pending or leased, and a page was
    served more than once only to workers killed before they could store it. (A restarted
    worker takes back its killed predecessor's leases at once: same machine, pid gone.)"""
    rng = random.Random(18)
    killed: set[str] = set()
    at_restart = 0
    async with shared_site(pages=1000, delay=0.15) as site:
        extra = ("--concurrency", str(CONCURRENCY))
        workers = [
            await Worker.start(site, postgres, f"w{k}-0", tmp_path, *extra) for k in range(WORKERS)
        ]
        try:
            for kill in range(KILLS):
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # a worker starts in ~0.5 s
                slot = rng.randrange(WORKERS)
                victim = workers[slot]
                victim.kill()
                await victim.process.wait()
                killed.add(victim.name)
                name = f"w{slot}-{kill + 1}"
                workers[slot] = await Worker.start(site, postgres, name, tmp_path, *extra)
                if kill == KILLS // 2:
                    at_restart = len(site.hits)
                    await asyncio.to_thread(postgres_server.restart)
            assert 0 < at_restart < len(site.hits) < 2 * site.pages  # the faults: mid-crawl
            site.delay = 0.0
            codes = [await worker.wait(limit=LEASE_SECONDS + 60) for worker in workers]
        finally:
            for worker in workers:
                worker.kill()
        for worker, code in zip(workers, codes, strict=True):
            assert code == 0, f"{worker.name}: exit {code}: {worker.stderr}"
        urls = site.all_urls()
        served = site.hits_by_url()
    assert_finished(postgres, urls)
    assert set(served) == urls
    repeated = {
        url: agents
        for url, agents in served.items()
        if len([agent for agent in agents if agent not in killed]) > 1
    }
    assert repeated == {}
    again = sum(len(agents) - 1 for agents in served.values())
    assert again <= KILLS * CONCURRENCY * 2, again  # at most what the killed workers held
