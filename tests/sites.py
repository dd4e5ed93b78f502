"""Small aiohttp apps the tests crawl: a link graph, and pages made to order per test."""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["follow_app", "html_page", "tree_app"]


def html_page(body: str, title: str = "page", head: str = "") -> str:
    """Return a complete HTML document around `body`."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{head}</head>"
        f"<body>{body}</body></html>"
    )


def follow_app(pages: int = 60, links_per_page: int = 5) -> web.Application:
    """A deterministic link graph: `/` links to `/p/0`; page n links to (n*7+i) % pages.

    Each page also links to itself with a fragment, to an offsite host, to a `mailto:`, and
    to its own URL with different spelling (`/p/00n`), so de-duplication and admission have
    something to refuse. Every page `p/n` is reachable from `/p/0`.
    """

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html_page('<a href="/p/0">start</a>'), content_type="text/html")

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n >= pages:
            raise web.HTTPNotFound()
        targets = [(n + 1) % pages] + [(n * 7 + i) % pages for i in range(links_per_page)]
        links = "".join(f'<a href="/p/{t}">page {t}</a>' for t in targets)
        extra = (
            f'<a href="#top">top</a><a href="/p/{n}#again">self</a>'
            '<a href="http://offsite.invalid/x">offsite</a>'
            '<a href="mailto:someone@example.com">m</a>'
            f'<a href="../p/{(n + 2) % pages}">relative</a>'
        )
        body = f"<h1>Page {n}</h1><p class='n'>{n}</p>{links}{extra}"
        return web.Response(text=html_page(body, title=f"Page {n}"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/p/{n:\\d+}", page)
    return app


def tree_app(pages: int, delay: float = 0.0, *, link_parent: bool = False) -> web.Application:
    """A binary tree of pages: /p/n links to /p/2n+1 and /p/2n+2 (and /p/n//2 with
    `link_parent`), each answering after `delay` seconds, with its number in `p.n`."""

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if delay:
            await asyncio.sleep(delay)
        targets = (2 * n + 1, 2 * n + 2, n // 2) if link_parent else (2 * n + 1, 2 * n + 2)
        links = "".join(f'<a href="/p/{m}">{m}</a>' for m in targets if m < pages)
        return web.Response(
            text=html_page(f"<p class='n'>{n}</p>{links}"), content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    return app
