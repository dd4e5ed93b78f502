"""Serving a bundled demo site on loopback, on a socket bound before the event loop starts."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

__all__ = ["listening_socket", "serve_app"]


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Return a TCP socket bound to `port` (default: a free one) on `host` (the server
    listens on it later)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@asynccontextmanager
async def serve_app(app: web.Application, sock: socket.socket) -> AsyncIterator[str]:
    """Serve `app` on `sock` for the duration of the block; yields the site's base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()
