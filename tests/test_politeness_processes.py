"""A back-off is crawl-wide on one SQLite file with `crawl --processes 2`: when a host answers
one process 503 or 429 with a `Retry-After`, the other process, which holds requests of the
same host in memory, stops too until the `Retry-After` has passed (crawler.store.claims:
claims skip the paused host, and the writer passes on the pauses other processes stored,
crawler.fetch.politeness `Hosts.learn`). The server records when each request arrives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import scalar
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


def paused_app(status: int) -> web.Application:
    """One host, a.test: `/` links to `PAGES` pages, each answered after 0.1 s; the
    `PAUSE_AT`-th page request is answered `status` with `Retry-After: RETRY_AFTER`."""
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
            links = "".join(f'<a href="/p{n}">p{n}</a>' for n in range(PAGES))
            return web.Response(text=html_page(links), content_type="text/html")
        served += 1
        if served == PAUSE_AT:
            visits.answers.append((loop.time(), path, status))
            headers = {"Retry-After": f"{RETRY_AFTER:g}"}
            return web.Response(status=status, headers=headers)
        await asyncio.sleep(0.1)
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
        settings = ("concurrency=4", "concurrency_per_host=2", "retry_after_inline=0.5")
        await crawl_in_processes(database, start, 4096, *settings)
    visits = app[VISITS]
    assert scalar(database, "SELECT count(*) FROM pages") == PAGES + 1
    both = "SELECT count(DISTINCT crawl_id) FROM pages"
    assert scalar(database, both) == 2  # each process fetched pages of the host
    (paused_at, _, _), *_ = visits.answers
    pause_ends = paused_at + RETRY_AFTER
    during = [
        (round(at - paused_at, 2), path)
        for at, path in visits.arrivals
        if paused_at + LAG < at < pause_ends - 0.05
    ]
    assert during == []
    # and the pause did reach both: the other process had requests of the host in memory
    # and went on after the pause
    after = [at for at, _ in visits.arrivals if at >= pause_ends - 0.05]
    assert len(after) >= PAGES - PAUSE_AT - 20
