"""Broad crawls: per-host state bounded in memory, the rest in the `hosts` table.

A host leaves memory once it has no work and its state is written; a claim that gives it
work again reads it back (throttle, back-off, Crawl-delay, robots.txt answers). These tests
check that nothing a host learned is lost that way, in one run and across runs, that the
`hosts` table counts pages and errors, and that a crawl of many hosts keeps its host states,
robots.txt answers, idle connections and open descriptors under fixed bounds.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler import Crawl, crawl
from crawler.cli.common import with_start_urls
from crawler.engine import crawl as crawl_module
from crawler.fetch import politeness
from crawler.fetch.client import Fetcher
from crawler.fetch.politeness import Hosts
from crawler.fetch.robots import RobotsCache
from crawler.records import HostRecord
from crawler.settings import Settings
from tests.conftest import Target, rows, scalar
from tests.polite_sites import VISITS, Visits
from tests.sites import html_page
from tests.spiders import FollowAllSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


class FakeClock:
    """A monotonic and a wall clock that only move when told (or slept on)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.wall = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def fake_hosts(clock: FakeClock, **settings: Any) -> Hosts:
    return Hosts(
        Settings(**settings), clock=clock, wall=clock.time, sleep=clock.sleep, rand=lambda: 0.5
    )


async def backed_off(hosts: Hosts, host: str, retry_after: float) -> None:
    """One request of `host` answered 429 with a Retry-After."""
    async with hosts.slot(f"http://{host}/x") as slot:
        slot.responded(429, retry_after)


async def test_a_snapshot_restores_the_back_off_throttle_and_crawl_delay() -> None:
    clock = FakeClock()
    hosts = fake_hosts(clock)
    hosts.set_crawl_delay("a.test", 0.5)
    await backed_off(hosts, "a.test", 30.0)
    record = hosts.snapshot("a.test")
    assert record.not_before == pytest.approx(clock.time() + 30.0, abs=1e-6)
    assert record.last_status == 429 and record.crawl_delay == 0.5
    clock.advance(10.0)
    later = fake_hosts(clock)  # a resumed run, or the same run after the host left memory
    later.restore(record)
    state = later["a.test"]
    assert state.start_at() == pytest.approx(clock() + 20.0)
    assert state.throttle.delay == hosts["a.test"].throttle.delay >= 0.5
    assert state.throttle.limit == hosts["a.test"].throttle.limit
    async with later.slot("http://a.test/y"):
        pass
    assert clock.time() == pytest.approx(
        record.not_before, abs=1e-6
    )  # slept out the rest of the 30 s


async def test_restore_leaves_a_host_in_memory_as_it_is() -> None:
    clock = FakeClock()
    hosts = fake_hosts(clock)
    await backed_off(hosts, "a.test", 30.0)
    stale = HostRecord(
        host="a.test",
        crawl_delay=None,
        throttle_delay=0.0,
        throttle_concurrency=8,
        not_before=None,
        last_status=200,
    )
    hosts.restore(stale)
    assert hosts["a.test"].start_at() == pytest.approx(clock() + 30.0)


async def test_restore_keeps_the_throttle_within_this_runs_settings() -> None:
    clock = FakeClock()
    hosts = fake_hosts(clock, concurrency_per_host=2, autothrottle_max_delay=5.0)
    record = HostRecord(
        host="a.test",
        crawl_delay=None,
        throttle_delay=60.0,
        throttle_concurrency=16,
        not_before=None,
        last_status=200,
    )
    hosts.restore(record)
    assert hosts["a.test"].throttle.limit == 2
    assert hosts["a.test"].throttle.delay == 5.0
    assert hosts["a.test"].start_at() == -math.inf


async def test_trim_forgets_only_idle_hosts_beyond_the_recent_ones() -> None:
    clock = FakeClock()
    hosts = Hosts(Settings(), clock=clock, wall=clock.time, recent=2)
    for name in ("a", "b", "c", "d", "e"):
        hosts[name]
    hosts.reserve("a")  # handed out: busy
    hosts.snapshot("b")  # its record is not written yet
    held = {"c"}  # the feeder holds requests of it
    assert hosts.trim(held.__contains__) == ["d", "e"]
    assert len(hosts) == 3  # more than 2 while they have work
    hosts.finish("a")
    hosts.saved(["b"])
    held.clear()
    assert hosts.trim(held.__contains__) == ["b"]  # the least recently used ("a" was reserved)
    assert "a" in hosts and "c" in hosts and len(hosts) == 2


def host_of_request(request: web.Request) -> str:
    return request.host.split(":")[0]


BACKED_OFF = web.AppKey("backed_off", asyncio.Event)


def back_off_app(retry_after: float) -> web.Application:
    """Two hosts on one server: on A, `/` links to `/x`, which answers 429 with a Retry-After
    the first time; on B, `/` links to `/slow`, which answers after 0.5 s with a link to A's
    `/y`: a new request of A that arrives while A is in back-off and out of memory."""
    visits = Visits()
    app = web.Application()
    app[VISITS] = visits
    app[BACKED_OFF] = asyncio.Event()
    answered: set[str] = set()

    async def handle(request: web.Request) -> web.Response:
        host, path = host_of_request(request), request.path
        loop = asyncio.get_running_loop()
        visits.arrivals.append((loop.time(), f"{host}{path}"))
        status, body = 200, html_page("")
        if path == "/robots.txt":
            return web.Response(text="User-agent: *\nDisallow: /private\n")
        if host == "a.test" and path == "/":
            body = html_page('<a href="/x">x</a><a href="/private">p</a>')
        elif host == "a.test" and path == "/x" and "x" not in answered:
            answered.add("x")
            visits.answers.append((loop.time(), f"{host}{path}", 429))
            app[BACKED_OFF].set()
            return web.Response(status=429, headers={"Retry-After": f"{retry_after:g}"})
        elif host == "b.test" and path == "/":
            body = html_page('<a href="/slow">slow</a>')
        elif host == "b.test" and path == "/slow":
            await asyncio.sleep(0.5)
            port = request.url.port
            body = html_page(f'<a href="http://a.test:{port}/y">y</a>')
        return web.Response(status=status, text=body, content_type="text/html")

    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.mark.usefixtures("named_hosts")
async def test_a_host_evicted_in_back_off_is_not_fetched_early_after_reload(
    database: Target, restored: list[str]
) -> None:
    app = back_off_app(retry_after=2.0)
    async with TestServer(app, host="127.0.0.1") as server:
        port = server.port
        spider = with_start_urls(
            FollowAllSpider, [f"http://a.test:{port}/", f"http://b.test:{port}/"]
        )
        stats = await crawl(spider, db=database, settings={**FAST, "retry_after_inline": 0.5})
    visits = app[VISITS]
    assert stats["pages"] == 5  # a: /, /x (after its deferral), /y; b: /, /slow
    assert "a.test" in restored  # it did leave memory, and came back from the table
    backed_off_at = next(at for at, path, status in visits.answers if status == 429)
    for path in ("a.test/y", "a.test/x"):
        started = next(at for at, seen in visits.arrivals[::-1] if seen == path)
        assert started >= backed_off_at + 2.0 - 0.05, path
    # robots.txt answers came back with the host: asked once per host, still obeyed
    assert sum(1 for _, path in visits.arrivals if path.endswith("/robots.txt")) == 2
    assert scalar(database, "SELECT reason FROM requests WHERE url LIKE '%/private'") == "robots"
    stored = rows(database, "SELECT host, fetched, errors, last_status FROM hosts ORDER BY host")
    assert stored == [("a.test", 3, 1, 200), ("b.test", 2, 0, 200)]


@pytest.mark.usefixtures("named_hosts")
async def test_a_back_off_and_robots_txt_survive_a_resume(database: Target) -> None:
    app = back_off_app(retry_after=3.0)
    settings = {**FAST, "retry_after_inline": 0.5}
    visits = app[VISITS]
    async with TestServer(app, host="127.0.0.1") as server:
        home = f"http://a.test:{server.port}/"
        first = Crawl(with_start_urls(FollowAllSpider, [home]), db=database, settings=settings)
        running = asyncio.create_task(first.run())
        await app[BACKED_OFF].wait()  # stopped while /x waits out its Retry-After
        first.stop()
        first_stats = await running
        not_before = scalar(database, "SELECT not_before FROM hosts WHERE host = 'a.test'")
        # the next run brings a new request of the host, due at once
        spider = with_start_urls(FollowAllSpider, [home, f"{home}y"])
        second = await crawl(spider, db=database, settings=settings)
    assert first_stats["pages"] == 1 and second["pages"] == 2  # /, then /x and /y
    backed_off_at = next(at for at, _, status in visits.answers if status == 429)
    started = next(at for at, seen in visits.arrivals if seen == "a.test/y")
    assert started >= backed_off_at + 3.0 - 0.05
    assert isinstance(not_before, float)
    assert sum(1 for _, path in visits.arrivals if path.endswith("/robots.txt")) == 1


WITHOUT_COOKIE = web.AppKey("without_cookie", list[str])


def broad_app(hosts: int) -> web.Application:
    """`h0.test` … `h{hosts-1}.test` on one server: host i's home page links to the home
    pages of hosts 2i+1 and 2i+2 and to one page of its own; each has a robots.txt. Each
    home page sets a session cookie; the other pages list the hosts that did not send it
    back (`WITHOUT_COOKIE`)."""
    app = web.Application()
    app[VISITS] = Visits()
    app[WITHOUT_COOKIE] = []

    async def handle(request: web.Request) -> web.Response:
        name, path = host_of_request(request), request.path
        app[VISITS].arrivals.append((0.0, f"{name}{path}"))
        if path == "/leaf" and request.cookies.get("session") != name:
            app[WITHOUT_COOKIE].append(name)
        if path == "/robots.txt":
            return web.Response(text="User-agent: *\nDisallow: /private\nCrawl-delay: 0.01\n")
        index = int(name[1:].split(".")[0])
        port = request.url.port
        links = "".join(
            f'<a href="http://h{child}.test:{port}/">h{child}</a>'
            for child in (2 * index + 1, 2 * index + 2)
            if child < hosts and path == "/"
        )
        response = web.Response(text=html_page(links), content_type="text/html")
        if path == "/":
            response.text = html_page(links + '<a href="/leaf">leaf</a><a href="/private">p</a>')
            response.set_cookie("session", name, path="/")
        return response

    app.router.add_get("/{tail:.*}", handle)
    return app


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.usefixtures("named_hosts")
async def test_a_crawl_of_many_hosts_keeps_host_state_under_its_bound(
    database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    recent, hosts_count, concurrency = 64, 1200, 16
    monkeypatch.setattr(politeness, "RECENT_HOSTS", recent)
    seen: dict[str, int] = {"hosts": 0, "robots": 0, "idle": 0, "fds": 0, "cookies": 0}
    instances: dict[str, Any] = {}
    original_hosts_init = Hosts.__init__
    original_robots_init = RobotsCache.__init__

    def hosts_init(self: Hosts, *args: Any, **kwargs: Any) -> None:
        original_hosts_init(self, *args, **kwargs)
        instances["hosts"] = self

    def robots_init(self: RobotsCache, *args: Any, **kwargs: Any) -> None:
        original_robots_init(self, *args, **kwargs)
        instances["robots"] = self

    monkeypatch.setattr(Hosts, "__init__", hosts_init)
    monkeypatch.setattr(RobotsCache, "__init__", robots_init)
    original_fetcher = getattr(crawl_module, "Fetcher")  # noqa: B009  (the patched one)

    def fetcher(*args: Any, **kwargs: Any) -> Fetcher:
        made: Fetcher = original_fetcher(*args, **kwargs)
        instances["pool"] = made._connector
        instances["cookies"] = made.cookies
        return made

    monkeypatch.setattr(crawl_module, "Fetcher", fetcher)
    baseline = open_descriptors()

    async def watch() -> None:
        while True:
            await asyncio.sleep(0.02)
            if "pool" in instances:
                seen["hosts"] = max(seen["hosts"], len(instances["hosts"]))
                seen["robots"] = max(seen["robots"], len(instances["robots"]))
                seen["idle"] = max(seen["idle"], instances["pool"].idle_connections())
                seen["cookies"] = max(seen["cookies"], len(instances["cookies"]))
                seen["fds"] = max(seen["fds"], open_descriptors() - baseline)

    app = broad_app(hosts_count)
    settings = {
        **FAST,
        "concurrency": concurrency,
        "concurrency_per_host": 2,
        "queue_window": 200,
    }
    async with TestServer(app, host="127.0.0.1") as server:
        start = [f"http://h0.test:{server.port}/"]
        spider = type(
            "Broad",
            (FollowAllSpider,),
            {"name": "broad", "start_urls": start, "allowed_domains": []},
        )
        watcher = asyncio.create_task(watch())
        try:
            stats = await crawl(spider, db=database, settings=settings)
        finally:
            watcher.cancel()
    assert stats["pages"] == 2 * hosts_count
    assert scalar(database, "SELECT count(*) FROM hosts WHERE fetched = 2") == hosts_count
    assert scalar(database, "SELECT count(*) FROM robots") == hosts_count
    assert scalar(database, "SELECT count(*) FROM hosts WHERE crawl_delay = 0.01") == hosts_count
    # the recent ones, the hosts of the window's requests and of those handed out, and
    # those whose results the writer has not committed yet (about a batch's worth)
    bound = recent + settings["queue_window"] + 2 * concurrency + Settings().write_batch_size
    assert bound < hosts_count
    assert 0 < seen["hosts"] <= bound
    assert 0 < seen["robots"] <= bound
    assert 0 < seen["cookies"] <= bound  # one per host, of hosts in memory only
    assert app[WITHOUT_COOKIE] == []  # every leaf sent its host's cookie, loaded back or not
    assert seen["idle"] <= concurrency * 2  # idle connections of at most `concurrency` hosts
    # both ends of each connection (the server is in this process), in use and idle, then
    # the database (SQLite: the file, its WAL and shared memory; PostgreSQL: the writer's
    # and the turns' connections), the watcher's own listing
    assert seen["fds"] <= 2 * (concurrency + concurrency * 2) + 16
