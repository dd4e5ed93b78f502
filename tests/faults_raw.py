"""The raw-socket half of the fault server: responses that break HTTP itself.

aiohttp's web server always writes correct HTTP, so the `/raw/...` endpoints of `faults.py`
are written by hand on an `asyncio.start_server` socket. `FaultServer` starts this server
with `serve_raw`; the endpoints are documented in the `faults` module docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Final, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

Record: TypeAlias = Callable[[str, Iterable[tuple[str, str]]], object]
"""Called with the decoded path and the query pairs of every request the server reads."""

_Handler: TypeAlias = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, Mapping[str, str]], Awaitable[None]
]

TRICKLE_PAGE: Final = (
    b"<!doctype html><html><head><title>Trickle</title></head>"
    b'<body><p>Slow, but every byte is valid HTML.</p><a href="/ok">ok</a></body></html>'
)
"""The page `/raw/trickle` sends, byte by byte at first."""

SHORT_PAGE: Final = b"<html><body><p>The declared length ends here.</p></body></html>"
"""What `/raw/content-length-short` declares; the bytes it sends after this are extra."""

_PARTIAL_BODY: Final = b"<html><body><p>" + b"partial " * 25
_DECLARED_LENGTH: Final = 1000  # more than _PARTIAL_BODY, so the body is always unfinished
_RESET_DELAY: Final = 0.1  # lets the client read the headers, so the reset lands mid-body


def _head(status: str, headers: Mapping[str, str | int]) -> bytes:
    """Render a status line and headers; every raw response closes its connection."""
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join([*lines, "Connection: close", "", ""])).encode("latin-1")


def _html_head(length: int | None = None) -> bytes:
    """Headers for a 200 text/html response, with a Content-Length when `length` is given."""
    headers: dict[str, str | int] = {"Content-Type": "text/html; charset=utf-8"}
    if length is not None:
        headers["Content-Length"] = length
    return _head("200 OK", headers)


async def _reset_mid_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Send headers and part of the body, then abort with a TCP RST (SO_LINGER 0)."""
    writer.write(_html_head(_DECLARED_LENGTH) + _PARTIAL_BODY)
    await writer.drain()
    await asyncio.sleep(_RESET_DELAY)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _never_answers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Write nothing; hold the connection until the client gives up."""
    await reader.read()


async def _headers_then_stall(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Promise 1000 bytes, send a few, then stall until the client gives up."""
    writer.write(_html_head(_DECLARED_LENGTH) + b"<html>")
    await writer.drain()
    await reader.read()


async def _trickle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Send TRICKLE_PAGE one byte per 1/rate s for `seconds`, then the rest at once."""
    seconds = float(query.get("seconds", "30"))
    rate = float(query.get("rate", "1"))
    slow = TRICKLE_PAGE[: int(seconds * rate)]
    writer.write(_html_head(len(TRICKLE_PAGE)))
    for index in range(len(slow)):
        await asyncio.sleep(1 / rate)
        writer.write(slow[index : index + 1])
        await writer.drain()  # raises once the client has gone, which ends the trickle
    writer.write(TRICKLE_PAGE[len(slow) :])
    await writer.drain()


async def _content_length_long(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Declare 1000 bytes, send fewer, then close the connection cleanly (FIN)."""
    writer.write(_html_head(_DECLARED_LENGTH) + _PARTIAL_BODY)
    await writer.drain()


async def _content_length_short(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Declare SHORT_PAGE's length, then send SHORT_PAGE and more bytes after it."""
    writer.write(_html_head(len(SHORT_PAGE)) + SHORT_PAGE + b"<p>Bytes past Content-Length.</p>")
    await writer.drain()


async def _bad_chunked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Send one good chunk, then (after `pause` s, default 0) a chunk-size line that is not hex."""
    head = _head("200 OK", {"Content-Type": "text/html", "Transfer-Encoding": "chunked"})
    writer.write(head + b"6\r\n<html>\r\n")
    if pause := float(query.get("pause", "0")):
        await writer.drain()
        await asyncio.sleep(pause)
    writer.write(b"zz\r\nbroken\r\n0\r\n\r\n")
    await writer.drain()


async def _not_found(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: Mapping[str, str]
) -> None:
    """Answer an unknown raw path with a plain, well-formed 404."""
    body = b"no such raw fault"
    writer.write(_head("404 Not Found", {"Content-Length": len(body)}) + body)
    await writer.drain()


_ROUTES: Final[Mapping[str, _Handler]] = {
    "/raw/reset-mid-body": _reset_mid_body,
    "/raw/never-answers": _never_answers,
    "/raw/headers-then-stall": _headers_then_stall,
    "/raw/trickle": _trickle,
    "/raw/content-length-long": _content_length_long,
    "/raw/content-length-short": _content_length_short,
    "/raw/bad-chunked": _bad_chunked,
}


@contextlib.asynccontextmanager
async def serve_raw(sock: socket.socket, record: Record) -> AsyncIterator[None]:
    """Serve the `/raw/...` faults on an already bound socket until the context exits.

    Args:
        sock: a bound TCP socket; the server listens on it and closes it.
        record: told the path and query of every request read, to count hits.

    Connections still open at exit (a client stuck on `/raw/never-answers`, say) are
    cancelled and closed, so nothing outlives the test.
    """
    tasks: set[asyncio.Task[None]] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own tasks, not start_server's: Python 3.11 logs a cancelled handler task of
        # its own as an error, and at exit we cancel whatever is still being served.
        task = asyncio.get_running_loop().create_task(_serve(reader, writer, record))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, sock=sock)
    try:
        yield
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: Record
) -> None:
    """Read one request head, record it, and run the fault its path names."""
    try:
        with contextlib.suppress(
            ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
        ):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            parts = head.split(" ", 2)
            target = urlsplit(parts[1] if len(parts) == 3 else "/")
            path = unquote(target.path)
            query = parse_qsl(target.query, keep_blank_values=True)
            record(path, query)
            await _ROUTES.get(path, _not_found)(reader, writer, dict(query))
    finally:
        writer.close()
