"""A two-host site that counts, on the server side, who fetched what and how many at once.

For the tests of one crawl shared by several worker processes (tests/test_postgres_workers.py):
each worker sends its own User-Agent, so every hit is known by page and by worker, and the
site tracks the requests each host has in flight and when each one started.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.sites import html_page

__all__ = ["HOSTS", "Hit", "SharedSite", "shared_site"]

HOSTS = ("127.0.0.1", "127.0.0.2")


@dataclass(frozen=True, slots=True)
class Hit:
    """One page request the site answered."""

    host: str
    path: str
    agent: str
    started: float
    """time.time() on arrival: the clock of the workers' crawl-wide turns
    (crawler.store.pg_pacing)."""


@dataclass
class SharedSite:
    """Binary trees of `pages` pages on each of HOSTS: /p/n links to /p/2n+1 and /p/2n+2 on
    its host and to /p/n on the other host; each page answers after `delay` seconds."""

    pages: int
    delay: float
    ports: dict[str, int] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event | None = None
    """When set to an event, pages are answered only once it is set (their hits count
    on arrival)."""

    def url(self, host: str, n: int) -> str:
        return f"http://{host}:{self.ports[host]}/p/{n}"

    @property
    def start_urls(self) -> list[str]:
        return [self.url(host, 0) for host in HOSTS]

    def all_urls(self) -> set[str]:
        return {self.url(host, n) for host in HOSTS for n in range(self.pages)}

    def hits_by_url(self) -> dict[str, list[str]]:
        """Each fetched page's URL with the agents it was served to, in order."""
        served: dict[str, list[str]] = defaultdict(list)
        for hit in self.hits:
            served[f"http://{hit.host}:{self.ports[hit.host]}{hit.path}"].append(hit.agent)
        return dict(served)

    def forget(self) -> None:
        """Start counting afresh (another crawl of the same site)."""
        self.hits.clear()
        self.peak.clear()

    def app(self, host: str) -> web.Application:
        other = HOSTS[1 - HOSTS.index(host)]

        async def page(request: web.Request) -> web.Response:
            n = int(request.match_info["n"])
            agent = request.headers.get("User-Agent", "")
            self.hits.append(Hit(host, request.path, agent, time.time()))
            if self.gate is not None:
                await self.gate.wait()
            self.in_flight[host] += 1
            self.peak[host] = max(self.peak[host], self.in_flight[host])
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight[host] -= 1
            links = [f"/p/{m}" for m in (2 * n + 1, 2 * n + 2) if m < self.pages]
            links.append(self.url(other, n))
            body = "".join(f'<a href="{link}">{link}</a>' for link in links)
            return web.Response(
                text=html_page(f"<p class='n'>{n}</p>{body}"), content_type="text/html"
            )

        app = web.Application()
        app.router.add_get("/p/{n}", page)
        return app


@asynccontextmanager
async def shared_site(pages: int, delay: float) -> AsyncIterator[SharedSite]:
    """Serve a SharedSite on both hosts (one port each) for the `async with` block."""
    site = SharedSite(pages, delay)
    async with AsyncExitStack() as stack:
        for host in HOSTS:
            server = await stack.enter_async_context(TestServer(site.app(host), host=host))
            assert server.port is not None
            site.ports[host] = server.port
        yield site
