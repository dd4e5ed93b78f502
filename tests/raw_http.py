"""A raw-socket HTTP server on 127.0.0.1 that answers each path with exactly the bytes a test
registered: any status line, any header bytes, any body, chunked or not, valid or not.

aiohttp's web server only writes correct HTTP and `faults_raw.py` serves a fixed list of
faults; the property tests of hostile input need responses built from Hypothesis data. One
server serves many cases in turn: `server.route({path: raw_bytes})` replaces the table, and
`/` (unless a case registers it) is a normal page linking to every registered path, so a
spider that starts at `/` and follows links meets each of the case's responses once.

Every response is written whole and the connection is closed after it: a response whose
framing lies (a short Content-Length, no length at all) then ends at the close, as it would
from a real server that hangs up, and no case can leave bytes on a connection that a later
request would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Final, Self, final

__all__ = ["RawHttpServer", "chunked", "index_page", "raw_response"]

_HEAD_LIMIT: Final = 64 * 1024
"""Longest request head read; the crawler's own requests are far shorter."""
_NOT_FOUND: Final = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
    b"Connection: close\r\n\r\nnot found"
)


def raw_response(
    status_line: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    chunks: Sequence[bytes] | None = None,
) -> bytes:
    """The bytes of a response: the status line and `name: value` lines as given (nothing is
    checked or escaped), a blank line, then `body`, or `chunks` in chunked framing (the
    caller adds `Transfer-Encoding: chunked` if it wants the framing announced)."""
    head = b"".join(line + b"\r\n" for line in (status_line, *(n + b": " + v for n, v in headers)))
    payload = body if chunks is None else chunked(chunks)
    return head + b"\r\n" + payload


def chunked(chunks: Sequence[bytes]) -> bytes:
    """`chunks` in HTTP/1.1 chunked framing, ended by the zero-size chunk (empty chunks are
    left out: a zero-size chunk would end the body early)."""
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return framed + b"0\r\n\r\n"


def index_page(paths: Iterable[str]) -> bytes:
    """A well-formed 200 HTML page linking to `paths`."""
    links = "".join(f'<li><a href="{html.escape(p)}">{html.escape(p)}</a></li>' for p in paths)
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Cases</title></head>"
        f"<body><ul>{links}</ul></body></html>"
    ).encode()
    return raw_response(
        b"HTTP/1.1 200 OK",
        [
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ],
        body,
    )


@final
class RawHttpServer:
    """Serve registered raw responses on 127.0.0.1 for the duration of an `async with` block.

    Example:
        async with RawHttpServer() as server:
            server.route({"/c/1": raw_response(b"HTTP/1.1 200 OK", [], b"hi")})
            ...crawl server.url("/")...
            assert server.hits["/c/1"] == 1
    """

    def __init__(self) -> None:
        self._routes: dict[str, bytes] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.hits: Counter[str] = Counter()
        """Requests read per request target (path and query, as sent), since the last route()."""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._accept, host="127.0.0.1", port=0, limit=_HEAD_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT`, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of a path on this server."""
        return self.origin + path

    def route(
        self, routes: Mapping[str, bytes], *, index: bool = True, unlinked: Iterable[str] = ()
    ) -> None:
        """Answer each request target in `routes` with its bytes, and nothing else (404).

        With `index`, `/` (unless given) links to every other target but `/robots.txt` and
        those in `unlinked` (reached by redirects, say). Replaces the previous table and
        resets `hits`.
        """
        table = dict(routes)
        if index and "/" not in table:
            hidden = {"/robots.txt", *unlinked}
            table["/"] = index_page(p for p in routes if p not in hidden)
        self._routes = table
        self.hits.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own tasks, not start_server's: Python 3.11 logs a cancelled handler task of its
        # own as an error, and at exit we cancel whatever is still being served.
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request head and write the bytes registered for its target."""
        try:
            with contextlib.suppress(
                ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
            ):
                head = await reader.readuntil(b"\r\n\r\n")
                parts = head.split(b"\r\n", 1)[0].split(b" ")
                target = parts[1].decode("latin-1") if len(parts) == 3 else "/"
                self.hits[target] += 1
                writer.write(self._routes.get(target, _NOT_FOUND))
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
