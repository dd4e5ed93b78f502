"""The hostile web on loopback: a fault-injecting server for the crawler's tests and benchmarks.

`async with FaultServer() as server:` serves every endpoint below; `server.url(path)` gives
its absolute URL (the `/raw/...` ones live on a second, hand-written HTTP server, see
`faults_raw.py`), `server.hits(path)` counts requests, and `/` links to every entry of
`FAULTS`, which says what a correct crawler records for each one with request_timeout 2 s,
max_size 1 MiB, max_retries 2 and max_redirects 5. Counters are per server, never global.

Retries (attempts are counted per full URL, query order ignored):
    /flaky?fail=K&status=S            S (503) for the first K (2) requests, then 200
    /always?status=S                  S (500) forever
    /retry-after?seconds=N&status=S&fail=K   S (429) with `Retry-After: N` (1) K (1) times, then 200
    /retry-after-date?seconds=N&status=S&fail=K   the same with an HTTP-date Retry-After
Connections (raw server unless noted):
    /refused                          (`refused_url()`) a port where nothing listens
    /raw/reset-mid-body               headers and part of the body, then a TCP RST
    /raw/never-answers                reads the request, never writes
    /raw/headers-then-stall           Content-Length 1000, a few bytes, then silence
    /raw/trickle?seconds=N&rate=R     a valid page at R (1) bytes/s for N (30) s, then the rest
    /raw/content-length-long          declares 1000 bytes, sends fewer, closes
    /raw/content-length-short         declares fewer bytes than it sends (SHORT_PAGE first)
    /raw/bad-chunked?pause=S          a chunk-size line that is not hex, after S (0) s
Encodings and sizes:
    /corrupt-gzip                     `Content-Encoding: gzip` over an invalid deflate stream
    /gzip-bomb?bytes=N                N (1 GiB) zeros as gzip (~1 MB: deflate tops out near 1030:1)
    /deflate-bomb?bytes=N             the same as zlib-wrapped deflate
    /brotli-bomb?bytes=N              the same as brotli (under 1 KB)
    /big?bytes=N                      N (2 MiB) bytes of HTML with a Content-Length
    /big-chunked?bytes=N              the same, chunked, streamed without holding it
Redirects (302):
    /redirect-loop                    -> /redirect-loop-b -> /redirect-loop -> ...
    /redirect-chain?n=N[&via=V]       N (3) hops through /redirect-chain?n=N-1 ... then 200
    /redirect-offsite                 -> http://127.0.0.2:<same port>/redirect-target
    /redirect-scheme?to=T             -> an ftp: (default), javascript: or data: URL
    /redirect-relative                `Location: ../redirect-target` (above the root)
    /redirect-target                  200
Pages:
    /html/unclosed, /html/nul-bytes, /html/binary?bytes=N (4096 random bytes as text/html)
    /html/long-line?bytes=N           one line of N (10 MB) bytes
    /html/wrong-charset               declares utf-8, body is windows-1252 (CHARSET_TEXT)
    /html/unknown-charset             `charset=x-made-up`
    /html/utf16-bom                   UTF-16 LE with a BOM, no charset in the header
    /html/mixed-encodings             utf-8 and latin-1 bytes in one page declared utf-8
    /html/meta-charset                charset only in <meta>, body in iso-8859-15
    /links/weird                      every kind of odd href, see WEIRD_HREFS
    /ok, /ok page/ünï, /text.txt, /image.png   plain 200s
Spider traps (each page is fine; following them never ends):
    /trap/calendar?year=Y&month=M     links to the previous and next month
    /trap/session?sid=S               links to itself with a longer sid
    /trap/a/                          links to `a/`, so /trap/a/a/a/... grows forever
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import codecs
import functools
import html
import itertools
import random
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Final, Self, TypeAlias, final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import brotli
from aiohttp import web

from tests.faults_raw import serve_raw

_Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]

GIB: Final = 1 << 30
MIB: Final = 1 << 20
CHARSET_TEXT: Final = "café à 5 €"
"""The text the charset pages carry, whatever bytes encode it."""
UNICODE_PATH: Final = "/ok page/ünï"
LONG_URL_PATH: Final = "/ok?pad=" + "x" * 9000
"""A same-site URL over 8 KB; a crawler skips it (aiohttp's server would refuse it anyway)."""
_CHUNK: Final = 64 * 1024


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One endpoint and what a correct crawler records for it."""

    path: str
    """Path and query on the server; `FaultServer.url(path)` makes it absolute."""
    expect_state: str
    """The request's final state: "done", "failed" or "skipped"."""
    expect_kind: str | None
    """The error kind when failed, the skip reason when skipped, None when done."""
    description: str
    """What the endpoint does, in a few words."""


def _done(path: str, description: str) -> Fault:
    return Fault(path=path, expect_state="done", expect_kind=None, description=description)


def _failed(path: str, kind: str, description: str) -> Fault:
    return Fault(path=path, expect_state="failed", expect_kind=kind, description=description)


FAULTS: Final[tuple[Fault, ...]] = (
    _done("/ok", "a plain page"),
    _done("/text.txt", "text/plain"),
    _done("/image.png", "a 1x1 PNG"),
    _done(UNICODE_PATH, "a path with a space and non-ASCII letters"),
    _done("/flaky?fail=2&status=503", "503 twice, then 200 on the last allowed attempt"),
    _done("/flaky?fail=1&status=500", "500 once, then 200"),
    _failed("/flaky?fail=3&status=503", "http_status", "503 three times: retries run out"),
    _failed("/always?status=500", "http_status", "500 forever"),
    _failed("/always?status=404", "http_status", "404, not worth retrying"),
    _done("/retry-after?seconds=1", "429 with Retry-After: 1, then 200"),
    _done("/retry-after?seconds=1&status=503", "503 with Retry-After: 1, then 200"),
    _done("/retry-after-date?seconds=1", "429 with an HTTP-date Retry-After, then 200"),
    _failed("/refused", "connection", "nothing listens on the port"),
    _failed("/raw/reset-mid-body", "protocol", "RST mid-body: to aiohttp, an unfinished body"),
    _failed("/raw/never-answers", "timeout", "accepts and never answers"),
    _failed("/raw/headers-then-stall", "timeout", "headers, a few bytes, then silence"),
    _failed("/raw/trickle?seconds=30", "timeout", "a byte a second for 30 s"),
    _done("/raw/trickle?seconds=1", "a byte a second for 1 s, then the rest"),
    _failed("/raw/content-length-long", "protocol", "closes before Content-Length is met"),
    _failed("/raw/content-length-short", "protocol", "bytes after the declared body"),
    _failed("/raw/bad-chunked", "protocol", "invalid chunk-size line"),
    _failed("/corrupt-gzip", "protocol", "Content-Encoding: gzip over garbage"),
    _failed("/gzip-bomb", "too_large", "1 GiB of zeros as ~1 MB of gzip"),
    _failed("/deflate-bomb", "too_large", "1 GiB of zeros as ~1 MB of deflate"),
    _failed("/brotli-bomb", "too_large", "1 GiB of zeros as <1 KB of brotli"),
    _failed("/big", "too_large", "2 MiB with Content-Length"),
    _failed("/big-chunked", "too_large", "2 MiB chunked, no Content-Length"),
    _done("/big?bytes=1048576", "exactly max_size: only bytes past it are too many"),
    _failed("/redirect-loop", "redirect", "A -> B -> A"),
    _done("/redirect-chain?n=3", "three hops, then 200"),
    _done("/redirect-chain?n=5", "exactly max_redirects hops, then 200"),
    _failed("/redirect-chain?n=6&via=long", "redirect", "one hop more than max_redirects"),
    _failed("/redirect-offsite", "redirect", "to 127.0.0.2, outside allowed domains"),
    _failed("/redirect-scheme?to=ftp", "redirect", "to an ftp: URL"),
    _failed("/redirect-scheme?to=javascript", "redirect", "to a javascript: URL"),
    _failed("/redirect-scheme?to=data", "redirect", "to a data: URL"),
    _done("/redirect-relative", "Location: ../redirect-target"),
    _done("/redirect-target", "where the relative redirect lands"),
    _done("/html/unclosed", "no closing tags"),
    _done("/html/nul-bytes", "NUL bytes in the markup"),
    _done("/html/binary", "random bytes served as text/html"),
    _failed("/html/long-line", "too_large", "one 10 MB line"),
    _done("/html/long-line?bytes=100000", "one 100 kB line"),
    _done("/html/wrong-charset", "says utf-8, is windows-1252"),
    _done("/html/unknown-charset", "charset=x-made-up"),
    _done("/html/utf16-bom", "UTF-16 LE with BOM, no charset"),
    _done("/html/mixed-encodings", "utf-8 and latin-1 in one page"),
    _done("/html/meta-charset", "charset only in <meta>, iso-8859-15"),
    _done("/links/weird", "empty, javascript:, mailto:, IDN, IPv6, 9 KB... hrefs"),
    _done("/trap/calendar?month=1&year=2024", "links to next and previous month forever"),
    _done("/trap/session?sid=0", "links to itself with a longer sid forever"),
    _done("/trap/a/", "links to a/ relative, forever deeper"),
    Fault(
        path=LONG_URL_PATH,
        expect_state="skipped",
        expect_kind="url_too_long",
        description="a same-site URL over 8 KB",
    ),
)
"""Every endpoint the index links to, with the outcome a correct crawler records."""

WEIRD_HREFS: Final[tuple[str, ...]] = (
    "",
    "   ",
    "javascript:void(0)",
    "mailto:a@b.c",
    "tel:+123",
    "//{host}/ok",
    "http://bücher.example/",
    UNICODE_PATH,
    LONG_URL_PATH,
    "http://127.0.0.1:99999/",
    "http://[::1]:1/",
    "../../../../ok",
    "#fragment-only",
    "/ok",
)
"""The hrefs on /links/weird, in order; `{host}` is the server's host:port (protocol-relative)."""

_PNG: Final = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
_HTML: Final = "text/html; charset=utf-8"
_SCHEME_TARGETS: Final = {
    "ftp": "ftp://127.0.0.1/file.txt",
    "javascript": "javascript:alert(1)",
    "data": "data:text/html,<p>hi</p>",
}
_OFFSITE_HOST: Final = "127.0.0.2"


def _page(title: str, body: str = "", head: str = "") -> str:
    return (
        f"<!doctype html><html><head>{head}<title>{title}</title></head><body>{body}</body></html>"
    )


def _links(hrefs: Iterable[str]) -> str:
    return "".join(
        f'<a href="{html.escape(href)}">{html.escape(href[:60])}</a>\n' for href in hrefs
    )


_STATIC: Final[dict[str, tuple[str, bytes]]] = {
    "/ok": (_HTML, _page("OK", "<p>ok</p>").encode()),
    UNICODE_PATH: (_HTML, _page("Unicode path", "<p>ok</p>").encode()),
    "/redirect-target": (_HTML, _page("Redirect target", "<p>landed</p>").encode()),
    "/text.txt": ("text/plain; charset=utf-8", b"plain text, not HTML\n"),
    "/image.png": ("image/png", _PNG),
    "/html/unclosed": (_HTML, b'<html><head><title>Unclosed<body><p>one<div><a href="/ok">ok'),
    "/html/nul-bytes": (_HTML, _page("NUL", '<p>a\0b</p>\0<a href="/ok">ok</a>').encode()),
    "/html/wrong-charset": (_HTML, _page("Wrong charset", CHARSET_TEXT).encode("cp1252")),
    "/html/unknown-charset": (
        "text/html; charset=x-made-up",
        _page("Unknown charset", CHARSET_TEXT).encode(),
    ),
    "/html/utf16-bom": (
        "text/html",
        codecs.BOM_UTF16_LE + _page("UTF-16", CHARSET_TEXT).encode("utf-16-le"),
    ),
    "/html/mixed-encodings": (
        _HTML,
        _page("Mixed", "utf-8: café / latin-1: ").encode() + "café".encode("latin-1"),
    ),
    "/html/meta-charset": (
        "text/html",
        _page("Meta charset", CHARSET_TEXT, '<meta charset="iso-8859-15">').encode("iso-8859-15"),
    ),
}
"""Fixed bodies by path, with their Content-Type."""

_REDIRECTS: Final[dict[str, str]] = {
    "/redirect-loop": "/redirect-loop-b",
    "/redirect-loop-b": "/redirect-loop",
    "/redirect-relative": "../redirect-target",
}
"""Fixed redirects by path, with their Location."""


def _url_key(path: str, query: Iterable[tuple[str, str]]) -> str:
    """Name a request by path and sorted query, so parameter order does not matter."""
    pairs = sorted(query)
    return f"{path}?{urlencode(pairs)}" if pairs else path


@final
class _Hits:
    """Requests seen by one FaultServer, per path and per full URL."""

    def __init__(self) -> None:
        self.by_path: Counter[str] = Counter()
        self.by_url: Counter[str] = Counter()

    def record(self, path: str, query: Iterable[tuple[str, str]]) -> None:
        self.by_path[path] += 1
        self.by_url[_url_key(path, query)] += 1

    def attempt(self, request: web.Request) -> int:
        """How many times this request's full URL has been asked for, this one included."""
        return self.by_url[_url_key(request.path, request.query.items())]


_HITS: Final = web.AppKey("hits", _Hits)


@web.middleware
async def _count(request: web.Request, handler: _Handler) -> web.StreamResponse:
    request.app[_HITS].record(request.path, request.query.items())
    return await handler(request)


def _failing(fail: int, status: int, form: str | None = None) -> _Handler:
    """Make a handler that answers `status` for the first `fail` attempts at a URL, then 200.

    `form` adds a Retry-After of `?seconds=` as "seconds" or as an HTTP "date".
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        seconds = int(request.query.get("seconds", "1"))
        limit = int(request.query.get("fail", str(fail)))
        if request.app[_HITS].attempt(request) > limit:
            return web.Response(text=_page("Recovered", "<p>ok now</p>"), content_type="text/html")
        headers: dict[str, str] = {}
        if form == "seconds":
            headers["Retry-After"] = str(seconds)
        elif form == "date":
            # HTTP dates have whole seconds: round up so the wait is at least `seconds`.
            when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds + 1)
            headers["Retry-After"] = format_datetime(when, usegmt=True)
        code = int(request.query.get("status", str(status)))
        return web.Response(status=code, text=f"failing with {code}", headers=headers)

    return handler


async def _static(request: web.Request) -> web.StreamResponse:
    content_type, body = _STATIC[request.path]
    return web.Response(body=body, headers={"Content-Type": content_type})


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


async def _fixed_redirect(request: web.Request) -> web.StreamResponse:
    return _redirect(_REDIRECTS[request.path])


async def _redirect_chain(request: web.Request) -> web.StreamResponse:
    hops = int(request.query.get("n", "3"))
    if hops > 0:  # `via` keeps two chains apart: a hop to a URL the crawl knows ends there
        via = f"&via={request.query['via']}" if "via" in request.query else ""
        return _redirect(f"/redirect-chain?n={hops - 1}{via}")
    return web.Response(text=_page("End of chain"), content_type="text/html")


async def _redirect_offsite(request: web.Request) -> web.StreamResponse:
    return _redirect(f"http://{_OFFSITE_HOST}:{request.url.port}/redirect-target")


async def _redirect_scheme(request: web.Request) -> web.StreamResponse:
    return _redirect(_SCHEME_TARGETS[request.query.get("to", "ftp")])


@functools.cache
def _deflated_zeros(size: int, wbits: int) -> bytes:
    """Deflate `size` zero bytes as gzip (wbits 31) or zlib (wbits 15) without expanding them.

    Deflate cannot beat about 1030:1, so 1 GiB costs ~1 MB and ~3 s to compress. After a full
    flush the compressor has forgotten its history, so every further MiB of zeros compresses
    to the same bytes: compress two blocks, repeat the second, and write the checksum trailer
    for the whole length ourselves (~0.3 s).
    """
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    full, rest = divmod(size, MIB)
    parts: list[bytes] = []
    for index in range(full):
        if index < 2:
            parts.append(compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH))
        else:
            parts.append(parts[1])
    parts.append(compressor.compress(bytes(rest)))
    checksum = zlib.crc32 if wbits > 15 else zlib.adler32
    value = checksum(b"")
    for _ in range(full):
        value = checksum(zeros, value)
    value = checksum(bytes(rest), value)
    trailer = struct.pack("<II", value, size % 2**32) if wbits > 15 else struct.pack(">I", value)
    return b"".join(parts) + compressor.flush()[: -len(trailer)] + trailer


@functools.cache
def _brotli_zeros(size: int) -> bytes:
    """Brotli-compress `size` zero bytes a MiB at a time; 1 GiB fits in under 1 KB (~0.8 s)."""
    compressor = brotli.Compressor(quality=5, lgwin=24)
    full, rest = divmod(size, MIB)
    zeros = bytes(MIB)
    parts = [compressor.process(zeros) for _ in range(full)]
    return b"".join([*parts, compressor.process(bytes(rest)), compressor.finish()])


_BOMBS: Final[dict[str, tuple[str, Callable[[int], bytes]]]] = {
    "/gzip-bomb": ("gzip", functools.partial(_deflated_zeros, wbits=31)),
    "/deflate-bomb": ("deflate", functools.partial(_deflated_zeros, wbits=15)),
    "/brotli-bomb": ("br", _brotli_zeros),
}


async def _bomb(request: web.Request) -> web.StreamResponse:
    encoding, compress = _BOMBS[request.path]
    size = int(request.query.get("bytes", str(GIB)))
    body = await asyncio.to_thread(compress, size)  # cached after the first call
    headers = {"Content-Type": _HTML, "Content-Encoding": encoding}
    return web.Response(body=body, headers=headers)


async def _corrupt_gzip(request: web.Request) -> web.StreamResponse:
    # A valid gzip header, then a deflate block of the reserved type 3: no decoder accepts it.
    body = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 64
    return web.Response(body=body, headers={"Content-Type": _HTML, "Content-Encoding": "gzip"})


def _filler(size: int, unit: bytes) -> Iterator[bytes]:
    """Yield `size` bytes of repeated `unit` in 64 KiB chunks, never all at once."""
    chunk = unit * (_CHUNK // len(unit))
    for start in range(0, size, len(chunk)):
        yield chunk[: size - start]


async def _stream(
    request: web.Request, parts: Iterable[bytes], length: int | None
) -> web.StreamResponse:
    """Send `parts` as text/html, with Content-Length `length`, or chunked when None."""
    response = web.StreamResponse(headers={"Content-Type": _HTML})
    if length is None:
        response.enable_chunked_encoding()
    else:
        response.content_length = length
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def _big(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("bytes", str(2 * MIB)))
    length = None if request.path == "/big-chunked" else size
    return await _stream(request, _filler(size, b"<p>big page</p>\n"), length)


async def _long_line(request: web.Request) -> web.StreamResponse:
    head, tail = b"<html><body><p>", b"</p></body></html>"
    size = max(int(request.query.get("bytes", "10000000")), len(head) + len(tail))
    middle = _filler(size - len(head) - len(tail), b"x")
    return await _stream(request, itertools.chain([head], middle, [tail]), size)


async def _binary(request: web.Request) -> web.StreamResponse:
    body = random.Random(0).randbytes(int(request.query.get("bytes", "4096")))
    return web.Response(body=body, headers={"Content-Type": "text/html"})


async def _weird_links(request: web.Request) -> web.StreamResponse:
    hrefs = [href.replace("{host}", request.host) for href in WEIRD_HREFS]
    return web.Response(text=_page("Weird links", _links(hrefs)), content_type="text/html")


async def _calendar(request: web.Request) -> web.StreamResponse:
    year, month = int(request.query.get("year", "2024")), int(request.query.get("month", "1"))
    before = (year - 1, 12) if month == 1 else (year, month - 1)
    after = (year + 1, 1) if month == 12 else (year, month + 1)
    hrefs = [f"/trap/calendar?year={y}&month={m}" for y, m in (before, after)]
    title = f"{calendar.month_name[month]} {year}"
    return web.Response(text=_page(title, _links(hrefs)), content_type="text/html")


async def _session(request: web.Request) -> web.StreamResponse:
    sid = request.query.get("sid", "0")
    links = _links([f"/trap/session?sid={sid}{len(sid) % 10}"])
    return web.Response(text=_page("Session", links), content_type="text/html")


async def _deeper(request: web.Request) -> web.StreamResponse:
    return web.Response(text=_page("Deeper", _links(["a/"])), content_type="text/html")


_ROUTES: Final[dict[str, _Handler]] = {
    **dict.fromkeys(_STATIC, _static),
    **dict.fromkeys(_REDIRECTS, _fixed_redirect),
    **dict.fromkeys(_BOMBS, _bomb),
    "/flaky": _failing(fail=2, status=503),
    "/always": _failing(fail=2**62, status=500),
    "/retry-after": _failing(fail=1, status=429, form="seconds"),
    "/retry-after-date": _failing(fail=1, status=429, form="date"),
    "/corrupt-gzip": _corrupt_gzip,
    "/big": _big,
    "/big-chunked": _big,
    "/redirect-chain": _redirect_chain,
    "/redirect-offsite": _redirect_offsite,
    "/redirect-scheme": _redirect_scheme,
    "/html/long-line": _long_line,
    "/html/binary": _binary,
    "/links/weird": _weird_links,
    "/trap/calendar": _calendar,
    "/trap/session": _session,
    "/trap/{tail:(?:a/)+}": _deeper,
}


def _bound_socket(host: str) -> socket.socket:
    """A TCP socket bound to a free port on `host`, not yet listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock


@final
class FaultServer:
    """Serve every fault endpoint on loopback for the duration of an `async with` block.

    Two listeners share one host: an aiohttp app for faults that correct HTTP can express,
    and a raw asyncio server (paths under `/raw/`) for faults that break HTTP itself. A third
    port is bound once and closed, so `/refused` meets a closed port. Hit counts, and with
    them the "failures left" of the retry endpoints, belong to this instance.

    Example:
        async with FaultServer() as server:
            async with session.get(server.url("/flaky?fail=1")) as response:
                assert response.status == 503
            assert server.hits("/flaky") == 1
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Prepare a server on `host` (a loopback address other than 127.0.0.2)."""
        self.host = host
        self._hits = _Hits()
        self._stack = AsyncExitStack()
        self._ports = {"http": 0, "raw": 0, "refused": 0}

    async def __aenter__(self) -> Self:
        # The bombs' bodies take seconds to compress on a loaded machine: made before the
        # first request, so that a crawler's request timeout never measures the server.
        await asyncio.gather(*(asyncio.to_thread(make, GIB) for _, make in _BOMBS.values()))
        async with AsyncExitStack() as stack:
            http_sock, raw_sock, refused = (_bound_socket(self.host) for _ in range(3))
            for sock in (http_sock, raw_sock, refused):
                stack.callback(sock.close)
            self._ports = {
                "http": http_sock.getsockname()[1],
                "raw": raw_sock.getsockname()[1],
                "refused": refused.getsockname()[1],
            }
            refused.close()
            runner = web.AppRunner(
                self._app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.SockSite(runner, http_sock).start()
            await stack.enter_async_context(serve_raw(raw_sock, self._hits.record))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def url(self, path: str) -> str:
        """Return the absolute URL of `path` (with its query), on whichever port serves it."""
        if path.startswith("/raw/"):
            port = self._ports["raw"]
        elif path == "/refused":
            port = self._ports["refused"]
        else:
            port = self._ports["http"]
        return f"http://{self.host}:{port}{path}"

    def refused_url(self) -> str:
        """Return a URL on a port of this host where nothing listens."""
        return self.url("/refused")

    def hits(self, path: str) -> int:
        """Count requests for `path`; with a query, only those with that exact query (any order).

        Paths compare decoded, so `/ok%20page/%C3%BCn%C3%AF` and `/ok page/ünï` are the same.
        """
        parts = urlsplit(path)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            return self._hits.by_url[_url_key(unquote(parts.path), pairs)]
        return self._hits.by_path[unquote(parts.path)]

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[_count])
        app[_HITS] = self._hits
        app.router.add_get("/", self._index)
        for path, handler in _ROUTES.items():
            app.router.add_get(path, handler)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        links = _links(self.url(fault.path) for fault in FAULTS)
        return web.Response(text=_page("Faults", links), content_type="text/html")
