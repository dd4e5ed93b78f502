"""HTML responses shared by the demo sites: a page, and an HTML 404 for unknown paths."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["html_not_found", "html_response"]


def html_response(text: str, status: int = 200) -> web.Response:
    """An HTML page in UTF-8."""
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def html_not_found(page: str) -> Middleware:
    """A middleware that answers unknown paths with `page` and status 404, as real sites'
    servers do (aiohttp's own 404 is plain text)."""

    @web.middleware
    async def not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return html_response(page, status=404)

    return not_found
