"""A back-off is crawl-wide with `crawl --processes 2`: when a host answers one process 503
or 429 with a `Retry-After`, the other process, which holds requests of the same host in
memory, stops too until the `Retry-After` has passed (claims skip the paused host, and the
writer passes on the pauses other processes stored: crawler.store.claims and
crawler.store.pg_claims `stored_pauses`, crawler.fetch.politeness `Hosts.learn`), on one
SQLite file and on one PostgreSQL database. The server records when each request arrives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Target, scalar
from tests.polite_sites import VISITS, Visits
from tests.sites import html_page
from tests.test_host_memory import host_of_request
from tests.test_host_memory_processes import crawl_in_processes

PAGES = 160
PAUSE_AT = 40
"""The request of a page (counted on the server) that is answered with the back-off."""
RETRY_AFTER = 4.0
LAG = 1.2
"""Seconds the pause may take to reach the other process: the process that was told commits
it with its next batch (`write_interval`, 0.25 s), the other reads it between two of its own
batches (crawler.store.claims `PAUSES_EVERY`, 0.25 s), and a request it started meanwhile
arrives."""


def arrivals_during_the_pause(visits: Visits) -> list[tuple[float, str]]:
    """The requests that reached the server while the first answer's pause held, past the
    `LAG` the pause takes to reach the other process: (seconds after the answer, path)."""
    (paused_at, _, _), *_ = visits.answers
    return [
        (round(at - paused_at, 2), path)
        for at, path in visits.arrivals
        if paused_at + LAG < at < paused_at + RETRY_AFTER - 0.05
    ]


def paused_app(
    status: int, pages: int = PAGES, pause_at: int = PAUSE_AT, latency: float = 0.1
) -> web.Application:
    """One host, a.test: `/` links to `pages` pages, each answered after `latency` seconds;
    the `pause_at`-th page request is answered `status` with `Retry-After: RETRY_AFTER`."""
    visits = Visits()
    app = web.Application()
    app[VISITS] = visits
    served = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal served
        loop = asyncio.get_running_loop()
        path = f"{host_of_request(request)}{request.path}"
        visits.arrivals.append((loop.time(), path))
        if request.path == "/robots.txt":
            return web.Response(status=404)
        if request.path == "/":
            links = "".join(f'<a href="/p{n}">p{n}</a>' for n in range(pages))
            return web.Response(text=html_page(links), content_type="text/html")
        served += 1
        if served == pause_at:
            visits.answers.append((loop.time(), path, status))
            headers = {"Retry-After": f"{RETRY_AFTER:g}"}
            return web.Response(status=status, headers=headers)
        await asyncio.sleep(latency)
        return web.Response(text=html_page(""), content_type="text/html")

    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("status", [503, 429])
async def test_a_host_paused_by_one_process_is_not_fetched_by_the_other(
    tmp_path: Path, status: int
) -> None:
    database = tmp_path / "crawl.db"
    app = paused_app(status)
    async with TestServer(app, host="127.0.0.1") as server:
        start = [f"http://a.test:{server.port}/"]
        # 2 in flight in each process, a cap that lets both hold requests of the host
        settings = ("concurrency=2", "concurrency_per_host=4", "retry_after_inline=0.5")
        await crawl_in_processes(database, start, 4096, *settings)
    visits = app[VISITS]
    assert scalar(database, "SELECT count(*) FROM pages") == PAGES + 1
    both = "SELECT count(DISTINCT crawl_id) FROM pages"
    assert scalar(database, both) == 2  # each process fetched pages of the host
    assert arrivals_during_the_pause(visits) == []
    pause_ends = visits.answers[0][0] + RETRY_AFTER
    # and the pause did reach both: the other process had requests of the host in memory
    # and went on after the pause
    after = [at for at, _ in visits.arrivals if at >= pause_ends - 0.05]
    assert len(after) >= PAGES - PAUSE_AT - 20


async def test_requests_the_other_process_holds_wait_out_the_pause(database: Target) -> None:
    """Each process fetches one page at a time (slow pages: 0.6 s), and a host may have 16
    requests leased crawl-wide: when one process is told to back off, the other holds
    several requests of the host that it would send one after the other, seconds into the
    pause. It holds them back instead, on either database (PostgreSQL's claims skipped the
    paused host, but the requests already held went out during the pause)."""
    pages, pause_at = 60, 20
    app = paused_app(429, pages=pages, pause_at=pause_at, latency=0.6)
    async with TestServer(app, host="127.0.0.1") as server:
        start = [f"http://a.test:{server.port}/"]
        settings = ("concurrency=1", "concurrency_per_host=16", "retry_after_inline=0.5")
        await crawl_in_processes(database, start, 4096, *settings)
    visits = app[VISITS]
    assert scalar(database, "SELECT count(*) FROM pages") == pages + 1
    assert scalar(database, "SELECT count(DISTINCT crawl_id) FROM pages") == 2
    assert arrivals_during_the_pause(visits) == []
