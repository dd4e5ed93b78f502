"""Hostile spiders and sites: callbacks that raise, yield garbage, block the loop or flood the
frontier, and pages big enough to fill a small disk."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from crawler import Request, Response, Spider
from tests.sites import html_page

FLOOD_REQUESTS: Final = 300_000
"""How many requests `FloodSpider` yields from its first page."""
BLOCK_SECONDS: Final = 0.3
"""How long `CallbackFaultsSpider.blocks` holds the event loop with `time.sleep`."""


class FloodSpider(Spider):
    """Yields `FLOOD_REQUESTS` requests (`/p/0` … on the start page's host) from one callback."""

    name = "flood"

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        prefix = response.urljoin("/p/")
        for n in range(FLOOD_REQUESTS):
            yield Request(f"{prefix}{n}", callback="leaf", depth=1)

    async def leaf(self, response: Response) -> AsyncIterator[Request]:
        return
        yield  # an async generator that yields nothing


class CallbackFaultsSpider(Spider):
    """One callback per way a callback can go wrong, each on its own page of a follow_app site.

    `blocks` and `waits` run at the same time: `blocks` first waits until `waits` has started
    its (non-blocking) sleep, then holds the loop, so only `blocks` may be blamed.
    """

    times: ClassVar[dict[str, float]] = {}
    """On time.perf_counter (the crawler's blocking detector's clock): `opened`, when the
    spider was opened, `held`, how long `blocks` held the loop, and `resumed`, when `blocks`
    was resumed after its item (its blocking step had ended)."""

    name = "callback_faults"
    settings: ClassVar[Mapping[str, object]] = {
        "autothrottle": False,
        "blocking_warning": 0.2,
        "concurrency": 8,
    }
    CALLBACKS: ClassVar[tuple[str, ...]] = ("raises", "garbage", "blocks", "waits")

    def __init__(self) -> None:
        super().__init__()
        self._waiting: asyncio.Event | None = None

    async def opened(self) -> None:
        self._waiting = asyncio.Event()
        self.times["opened"] = time.perf_counter()

    async def start_requests(self) -> AsyncIterator[Request]:
        (start,) = self.start_urls
        for n, callback in enumerate(self.CALLBACKS):
            yield Request(f"{start.rstrip('/')}/p/{n}", callback=callback)

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        return
        yield  # pages reached by following links are only recorded

    async def raises(self, response: Response) -> AsyncIterator[dict[str, Any] | Request]:
        yield {"kept": "before the exception"}
        yield response.follow("/p/10")
        raise ValueError("callback raises on purpose")

    async def garbage(self, response: Response) -> AsyncIterator[Any]:
        yield 42
        yield object()
        yield {"unstorable": object()}
        yield Request(response.urljoin("/p/11"), callback="no_such_callback")
        yield {"fine": True}

    async def blocks(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        assert self._waiting is not None
        await asyncio.wait_for(self._waiting.wait(), timeout=10)
        began = time.perf_counter()
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - the fault under test
        self.times["held"] = time.perf_counter() - began
        yield {"blocked": True}
        self.times["resumed"] = time.perf_counter()

    async def waits(self, response: Response) -> AsyncIterator[dict[str, Any]]:
        assert self._waiting is not None
        self._waiting.set()
        await asyncio.sleep(BLOCK_SECONDS * 2)  # spans the other callback's block
        yield {"waited": True}


def big_pages_app(pages: int, size: int, delay: float = 0.0) -> web.Application:
    """Pages `/p/0` … `/p/{pages-1}` of about `size` bytes of random (barely compressible)
    text each, answered after `delay` seconds; page n links to n+1 and n+2. For filling a
    small disk with `store_body`, or for a crawl that is still running when the disk fails."""

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n >= pages:
            raise web.HTTPNotFound()
        await asyncio.sleep(delay)
        filler = base64.b64encode(random.Random(n).randbytes(size * 3 // 4)).decode()
        links = "".join(f'<a href="/p/{t}">page {t}</a>' for t in (n + 1, n + 2) if t < pages)
        body = f"<p class='n'>{n}</p>{links}<p>{filler}</p>"
        return web.Response(text=html_page(body, title=f"Page {n}"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/p/{n:\\d+}", page)
    return app
