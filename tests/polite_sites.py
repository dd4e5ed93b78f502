"""Sites for the politeness tests: every request is logged with server-side timestamps, and
the number of requests in progress (and its peak) is counted, per site or across sites."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from tests.sites import html_page

__all__ = ["VISITS", "Gauge", "Visits", "page_site", "pages_app"]


@dataclass
class Gauge:
    """Requests in progress right now, and the most seen at once."""

    active: int = 0
    peak: int = 0

    def enter(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)

    def leave(self) -> None:
        self.active -= 1


@dataclass
class Visits:
    """What one site saw: each request's arrival and the end of its response."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)
    """(time.monotonic(), path) of every request, in arrival order."""
    answers: list[tuple[float, str, int]] = field(default_factory=list)
    """(time.monotonic(), path, status) as each response was sent."""
    gauge: Gauge = field(default_factory=Gauge)
    shared: Gauge | None = None
    """A gauge shared with other sites, to see concurrency across hosts."""

    def paths(self) -> list[str]:
        """The paths requested, in order."""
        return [path for _, path in self.arrivals]

    def times(self, prefix: str = "/") -> list[float]:
        """Arrival times of the requests whose path starts with `prefix`."""
        return [at for at, path in self.arrivals if path.startswith(prefix)]

    def hits(self, path: str) -> int:
        """How many times `path` was requested."""
        return sum(1 for _, seen in self.arrivals if seen == path)


VISITS = web.AppKey("visits", Visits)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page_site(
    routes: Mapping[str, str],
    *,
    robots: str | None = None,
    robots_status: int = 200,
    shared: Gauge | None = None,
) -> web.Application:
    """A site of fixed HTML pages (path -> body), with an optional robots.txt."""
    app = web.Application(middlewares=[_recorder])
    app[VISITS] = Visits(shared=shared)

    def page(body: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=html_page(body), content_type="text/html")

        return handler

    for path, body in routes.items():
        app.router.add_get(path, page(body))
    _add_robots(app, robots, robots_status)
    return app


def pages_app(
    pages: int,
    *,
    latency: float = 0.0,
    robots: str | None = None,
    robots_status: int = 200,
    too_many: Mapping[str, int] | None = None,
    retry_after: str = "1",
    shared: Gauge | None = None,
    hold: Callable[[], Awaitable[object]] | None = None,
) -> web.Application:
    """`/` links to `/p/0` … `/p/{pages-1}`; each page answers after `latency` seconds.

    Args:
        too_many: path -> how many of its first requests get `429 Too Many Requests` with
            `Retry-After: retry_after`.
        shared: a gauge shared with other sites' apps.
        hold: awaited by each page after its latency, before it answers: a page can wait
            for an event of the test instead of a length of time.
    """
    app = web.Application(middlewares=[_recorder])
    app[VISITS] = Visits(shared=shared)
    refusals = dict(too_many or {})

    async def index(request: web.Request) -> web.Response:
        links = "".join(f'<a href="/p/{n}">page {n}</a>' for n in range(pages))
        return web.Response(text=html_page(links), content_type="text/html")

    async def page(request: web.Request) -> web.Response:
        if refusals.get(request.path, 0) > 0:
            refusals[request.path] -= 1
            return web.Response(status=429, headers={"Retry-After": retry_after})
        await asyncio.sleep(latency)
        if hold is not None:
            await hold()
        n = request.match_info["n"]
        return web.Response(text=html_page(f"<p class='n'>{n}</p>"), content_type="text/html")

    app.router.add_get("/", index)
    app.router.add_get("/p/{n:\\d+}", page)
    _add_robots(app, robots, robots_status)
    return app


def _add_robots(app: web.Application, robots: str | None, status: int) -> None:
    if robots is None and status == 200:
        return  # no route: robots.txt is a 404

    async def robots_txt(request: web.Request) -> web.Response:
        return web.Response(text=robots or "", status=status, content_type="text/plain")

    app.router.add_get("/robots.txt", robots_txt)


@web.middleware
async def _recorder(request: web.Request, handler: Handler) -> web.StreamResponse:
    visits = request.app[VISITS]
    visits.arrivals.append((time.monotonic(), request.path))
    gauges = [visits.gauge] + ([visits.shared] if visits.shared else [])
    for gauge in gauges:
        gauge.enter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        for gauge in gauges:
            gauge.leave()
        visits.answers.append((time.monotonic(), request.path, status))
