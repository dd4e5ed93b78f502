"""HTML responses shared by the demo sites: a page, and an HTML 404 for unknown paths."""

from __future__ import annotations

import hashlib

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["etags", "html_not_found", "html_response"]


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


@web.middleware
async def etags(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every 200 response an `ETag` (a hash of its body) and answer a request whose
    `If-None-Match` names it with `304 Not Modified`, as nginx and most servers do."""
    response = await handler(request)
    if response.status != 200 or not isinstance(response, web.Response):
        return response
    body = response.body
    if not isinstance(body, bytes):
        return response
    etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
    if etag in (request.headers.get("If-None-Match") or "").split(", "):
        return web.Response(status=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return response
