"""Checks that every endpoint of `tests/faults.py` misbehaves exactly as its catalogue says.

These test the test server, not the crawler: aiohttp's client and raw sockets stand in for it.
"""

from __future__ import annotations

import asyncio
import html
import re
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import aiohttp
import brotli
import pytest

from tests.faults import (
    CHARSET_TEXT,
    FAULTS,
    GIB,
    LONG_URL_PATH,
    MIB,
    UNICODE_PATH,
    WEIRD_HREFS,
    FaultServer,
)
from tests.faults_raw import SHORT_PAGE, TRICKLE_PAGE

LIMIT = 10.0  # seconds any one test may take; each test body runs under asyncio.timeout(LIMIT)
KINDS = {"timeout", "connection", "protocol", "http_status", "too_large", "redirect"}
SKIP_REASONS = {
    *("offsite", "depth", "duplicate", "robots", "max_pages"),
    *("scheme", "rule", "trap", "url_too_long"),
}
HREF = re.compile(rb'href="([^"]*)"')


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    """A fresh fault server on 127.0.0.1."""
    async with FaultServer() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that hands back bodies exactly as sent (no decompression)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    """GET `url` without following redirects; return status, headers and body."""
    async with session.get(url, allow_redirects=False) as response:
        return response.status, dict(response.headers), await response.read()


async def raw_exchange(url: str, seconds: float) -> bytes:
    """Send a bare GET for `url` and return every byte received within `seconds`."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    received = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return bytes(received)


def split_response(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Split raw response bytes into status line, headers (lower-case names) and body."""
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, {name.lower(): value for name, value in headers.items()}, body


def hrefs(body: bytes) -> list[str]:
    return [html.unescape(href.decode()) for href in HREF.findall(body)]


async def test_flaky_fails_exactly_k_times_per_url_then_recovers(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        statuses = [
            (await get(session, server.url("/flaky?fail=2&status=503")))[0] for _ in range(3)
        ]
        other = (await get(session, server.url("/flaky?fail=1&status=500")))[0]
        reordered = (await get(session, server.url("/flaky?status=503&fail=2")))[0]
    assert statuses == [503, 503, 200]
    assert other == 500  # a different URL has its own count
    assert reordered == 200  # query order does not make a new URL
    assert server.hits("/flaky?fail=2&status=503") == 4
    assert server.hits("/flaky") == 5


async def test_counts_belong_to_each_server(session: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(LIMIT):
        async with FaultServer() as first:
            await get(session, first.url("/flaky?fail=1"))
            assert (await get(session, first.url("/flaky?fail=1")))[0] == 200
        async with FaultServer() as second:
            assert (await get(session, second.url("/flaky?fail=1")))[0] == 503
            assert second.hits("/flaky") == 1


async def test_always_never_recovers(server: FaultServer, session: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(LIMIT):
        statuses = {(await get(session, server.url("/always?status=500")))[0] for _ in range(5)}
        not_found = (await get(session, server.url("/always?status=404")))[0]
    assert statuses == {500}
    assert not_found == 404


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_then_ok(
    server: FaultServer, session: aiohttp.ClientSession, status: int
) -> None:
    url = server.url(f"/retry-after?seconds=7&status={status}")
    async with asyncio.timeout(LIMIT):
        first_status, headers, _ = await get(session, url)
        second_status, second_headers, _ = await get(session, url)
    assert (first_status, headers["Retry-After"]) == (status, "7")
    assert second_status == 200
    assert "Retry-After" not in second_headers


async def test_retry_after_date_is_an_http_date_at_least_n_seconds_ahead(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url = server.url("/retry-after-date?seconds=30")
    async with asyncio.timeout(LIMIT):
        before = datetime.now(UTC)
        status, headers, _ = await get(session, url)
        second_status = (await get(session, url))[0]
    when = parsedate_to_datetime(headers["Retry-After"])
    assert status == 429
    assert headers["Retry-After"].endswith(" GMT")
    assert before + timedelta(seconds=30) <= when <= before + timedelta(seconds=32)
    assert second_status == 200


async def test_refused_url_has_nothing_listening(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    assert server.refused_url() == server.url("/refused")
    async with asyncio.timeout(LIMIT):
        with pytest.raises(aiohttp.ClientConnectorError):
            await get(session, server.refused_url())


async def test_reset_mid_body_sends_headers_then_an_rst(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url = server.url("/raw/reset-mid-body")
    async with asyncio.timeout(LIMIT):
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(b"GET /raw/reset-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            await reader.read()  # up to EOF, which never comes: the RST does
        writer.close()
        async with session.get(url) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError, match="ConnectionResetError"):
                await response.read()
    assert b"Content-Length: 1000" in head


async def test_never_answers_holds_the_request_without_a_byte(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await get(session, server.url("/raw/never-answers"))
        received = await raw_exchange(server.url("/raw/never-answers"), 0.3)
    assert received == b""
    assert server.hits("/raw/never-answers") == 2  # the requests were read


async def test_headers_then_stall_promises_more_than_it_sends(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        async with session.get(server.url("/raw/headers-then-stall")) as response:
            assert (response.status, response.content_length) == (200, 1000)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await response.read()


async def test_trickle_sends_a_valid_page_slowly(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        partial = await raw_exchange(server.url("/raw/trickle?seconds=30&rate=10"), 0.5)
        status, _, complete = await get(session, server.url("/raw/trickle?seconds=0.2&rate=50"))
    _, headers, body = split_response(partial)
    assert int(headers["content-length"]) == len(TRICKLE_PAGE)
    assert 0 < len(body) < 10
    assert TRICKLE_PAGE.startswith(body)
    assert (status, complete) == (200, TRICKLE_PAGE)


async def test_content_length_long_closes_before_the_declared_length(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url = server.url("/raw/content-length-long")
    async with asyncio.timeout(LIMIT):
        _, headers, body = split_response(await raw_exchange(url, 2))
        async with session.get(url) as response:
            with pytest.raises(aiohttp.ClientPayloadError, match="content length"):
                await response.read()
    assert int(headers["content-length"]) == 1000 > len(body) > 0


async def test_content_length_short_sends_bytes_past_the_declared_length(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url = server.url("/raw/content-length-short")
    async with asyncio.timeout(LIMIT):
        _, headers, body = split_response(await raw_exchange(url, 2))
        # aiohttp sees the surplus in the same read and rejects the response as a whole.
        with pytest.raises(aiohttp.ClientResponseError, match="Data after"):
            await get(session, url)
    declared = int(headers["content-length"])
    assert (declared, body[:declared]) == (len(SHORT_PAGE), SHORT_PAGE)
    assert len(body) > declared


@pytest.mark.parametrize("query", ["", "?pause=0.1"])
async def test_bad_chunked_has_a_chunk_size_that_is_not_hex(
    server: FaultServer, query: str
) -> None:
    async with asyncio.timeout(LIMIT):
        status, headers, body = split_response(
            await raw_exchange(server.url(f"/raw/bad-chunked{query}"), 2)
        )
    assert (status, headers["transfer-encoding"]) == ("HTTP/1.1 200 OK", "chunked")
    assert body.startswith(b"6\r\n<html>\r\nzz\r\n")


async def test_bad_chunked_is_rejected_by_aiohttp(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    # Brief expected ClientPayloadError; aiohttp 3.14 parses headers and the bad chunk in one
    # go and fails the response itself. (With ?pause= it never fails: it hangs until timeout.)
    async with asyncio.timeout(LIMIT):
        with pytest.raises(aiohttp.ClientResponseError, match="chunk size"):
            await get(session, server.url("/raw/bad-chunked"))


async def test_corrupt_gzip_is_not_a_valid_gzip_stream(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        _, headers, body = await get(session, server.url("/corrupt-gzip"))
        async with (
            aiohttp.ClientSession() as decoding,
            decoding.get(server.url("/corrupt-gzip")) as response,
        ):
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    assert headers["Content-Encoding"] == "gzip"
    assert body.startswith(b"\x1f\x8b")
    with pytest.raises(zlib.error):
        zlib.decompressobj(31).decompress(body)


def _inflate(wbits: int) -> Callable[[bytes, int], bytes]:
    return lambda data, limit: zlib.decompressobj(wbits).decompress(data, limit)


def _unbrotli(data: bytes, limit: int) -> bytes:
    result: bytes = brotli.Decompressor().process(data, output_buffer_limit=limit)
    return result[:limit]


BOMBS = [
    ("/gzip-bomb", "gzip", _inflate(31), 1100 * 1000),  # deflate tops out near 1030:1
    ("/deflate-bomb", "deflate", _inflate(15), 1100 * 1000),
    ("/brotli-bomb", "br", _unbrotli, 50 * 1000),
]


@pytest.mark.parametrize(("path", "encoding", "decode", "most"), BOMBS)
async def test_bomb_is_small_on_the_wire_and_expands_to_a_gib_of_zeros(
    server: FaultServer,
    session: aiohttp.ClientSession,
    path: str,
    encoding: str,
    decode: Callable[[bytes, int], bytes],
    most: int,
) -> None:
    async with asyncio.timeout(LIMIT):
        _, headers, body = await get(session, server.url(path))
    assert headers["Content-Encoding"] == encoding
    assert len(body) < most
    assert len(body) * 1000 < GIB
    assert decode(body, MIB) == bytes(MIB)


@pytest.mark.parametrize("path", ["/gzip-bomb", "/deflate-bomb"])
async def test_deflate_bombs_are_complete_streams_with_valid_checksums(
    server: FaultServer, session: aiohttp.ClientSession, path: str
) -> None:
    size = 3 * MIB + 123
    async with asyncio.timeout(LIMIT):
        _, _, body = await get(session, server.url(f"{path}?bytes={size}"))
    decompressor = zlib.decompressobj(31 if path == "/gzip-bomb" else 15)
    assert decompressor.decompress(body) == bytes(size)  # raises on a bad checksum
    assert decompressor.eof
    assert decompressor.unused_data == b""


async def test_brotli_bomb_of_chosen_size_is_complete(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    size = 3 * MIB + 123
    async with asyncio.timeout(LIMIT):
        _, _, body = await get(session, server.url(f"/brotli-bomb?bytes={size}"))
    assert brotli.decompress(body) == bytes(size)


@pytest.mark.parametrize(("path", "chunked"), [("/big", False), ("/big-chunked", True)])
async def test_big_bodies_have_the_size_asked_for(
    server: FaultServer, session: aiohttp.ClientSession, path: str, chunked: bool
) -> None:
    size = 3 * MIB + 7
    async with asyncio.timeout(LIMIT):
        async with session.get(server.url(f"{path}?bytes={size}")) as response:
            length = response.content_length
            encoding = response.headers.get("Transfer-Encoding")
            received = 0
            async for chunk in response.content.iter_chunked(65536):
                received += len(chunk)
        _, _, default = await get(session, server.url(path))
    assert received == size
    assert len(default) == 2 * MIB
    assert (length, encoding) == ((None, "chunked") if chunked else (size, None))


async def test_redirect_loop_goes_back_and_forth(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        first = (await get(session, server.url("/redirect-loop")))[1]["Location"]
        second = (await get(session, server.url(first)))[1]["Location"]
    assert (first, second) == ("/redirect-loop-b", "/redirect-loop")


async def test_redirect_chain_takes_n_hops_then_answers(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url, hops = server.url("/redirect-chain?n=6"), 0
    async with asyncio.timeout(LIMIT):
        while (response := await get(session, url))[0] == 302:
            url, hops = urljoin(url, response[1]["Location"]), hops + 1
    assert (hops, response[0]) == (6, 200)


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/redirect-offsite", "http://127.0.0.2:{port}/redirect-target"),
        ("/redirect-scheme", "ftp://127.0.0.1/file.txt"),
        ("/redirect-scheme?to=ftp", "ftp://127.0.0.1/file.txt"),
        ("/redirect-scheme?to=javascript", "javascript:alert(1)"),
        ("/redirect-scheme?to=data", "data:text/html,<p>hi</p>"),
        ("/redirect-relative", "../redirect-target"),
    ],
)
async def test_redirects_point_where_they_say(
    server: FaultServer, session: aiohttp.ClientSession, path: str, location: str
) -> None:
    port = urlsplit(server.url("/")).port
    async with asyncio.timeout(LIMIT):
        status, headers, _ = await get(session, server.url(path))
    assert (status, headers["Location"]) == (302, location.format(port=port))


async def test_relative_redirect_resolves_to_the_target_page(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url = server.url("/redirect-relative")
    async with asyncio.timeout(LIMIT):
        target = urljoin(url, (await get(session, url))[1]["Location"])
        status = (await get(session, target))[0]
    assert (target, status) == (server.url("/redirect-target"), 200)


async def test_charset_pages_encode_the_same_text_in_the_advertised_ways(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        pages = {
            path: await get(session, server.url(f"/html/{path}"))
            for path in ("wrong-charset", "unknown-charset", "utf16-bom", "meta-charset")
        }
        mixed = (await get(session, server.url("/html/mixed-encodings")))[2]
    wrong, unknown, utf16, meta = (pages[name] for name in pages)
    assert "charset=utf-8" in wrong[1]["Content-Type"]
    assert CHARSET_TEXT in wrong[2].decode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        wrong[2].decode("utf-8")
    assert unknown[1]["Content-Type"] == "text/html; charset=x-made-up"
    assert (utf16[1]["Content-Type"], utf16[2][:2]) == ("text/html", b"\xff\xfe")
    assert CHARSET_TEXT in utf16[2].decode("utf-16")
    assert meta[1]["Content-Type"] == "text/html"
    assert b'<meta charset="iso-8859-15">' in meta[2]
    assert CHARSET_TEXT in meta[2].decode("iso-8859-15")
    assert "café".encode() in mixed
    assert "café".encode("latin-1") in mixed
    with pytest.raises(UnicodeDecodeError):
        mixed.decode("utf-8")


async def test_odd_html_pages_are_odd(server: FaultServer, session: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(LIMIT):
        unclosed = (await get(session, server.url("/html/unclosed")))[2]
        nul = (await get(session, server.url("/html/nul-bytes")))[2]
        _, binary_headers, binary = await get(session, server.url("/html/binary"))
        line = (await get(session, server.url("/html/long-line?bytes=100000")))[2]
        async with session.get(server.url("/html/long-line")) as response:
            long_length = response.content_length
    assert b"</" not in unclosed
    assert b"\0" in nul
    assert (binary_headers["Content-Type"], len(binary)) == ("text/html", 4096)
    assert len(line) == 100_000
    assert b"\n" not in line
    assert long_length == 10_000_000


async def test_plain_pages_have_their_types(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        ok = await get(session, server.url("/ok"))
        text = await get(session, server.url("/text.txt"))
        image = await get(session, server.url("/image.png"))
        unicode_path = await get(session, server.url(UNICODE_PATH))
        raw_missing = split_response(await raw_exchange(server.url("/raw/nothing-here"), 2))
    assert ok[0] == unicode_path[0] == 200
    assert text[1]["Content-Type"].startswith("text/plain")
    assert (image[1]["Content-Type"], image[2][:8]) == ("image/png", b"\x89PNG\r\n\x1a\n")
    assert server.hits("/ok page/%C3%BCn%C3%AF") == 1
    assert raw_missing[0] == "HTTP/1.1 404 Not Found"


async def test_weird_links_page_has_every_weird_href(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    url = server.url("/links/weird")
    async with asyncio.timeout(LIMIT):
        body = (await get(session, url))[2]
    host = urlsplit(url).netloc
    assert hrefs(body) == [href.replace("{host}", host) for href in WEIRD_HREFS]
    assert f"//{host}/ok" in hrefs(body)
    assert any(len(href) > 8192 for href in hrefs(body))
    assert urljoin(url, "../../../../ok") == server.url("/ok")


async def test_traps_link_onwards_forever(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        december = (await get(session, server.url("/trap/calendar?year=2024&month=12")))[2]
        session_page = (await get(session, server.url("/trap/session?sid=0123")))[2]
        status, _, deep = await get(session, server.url("/trap/a/a/a/a/"))
    assert hrefs(december) == [
        "/trap/calendar?year=2024&month=11",
        "/trap/calendar?year=2025&month=1",
    ]
    assert hrefs(session_page) == ["/trap/session?sid=01234"]
    assert (status, hrefs(deep)) == (200, ["a/"])


def test_catalogue_entries_are_well_formed() -> None:
    paths = [fault.path for fault in FAULTS]
    assert len(paths) == len(set(paths))
    for fault in FAULTS:
        assert fault.path.startswith("/")
        assert fault.description
        if fault.expect_state == "done":
            assert fault.expect_kind is None
        elif fault.expect_state == "failed":
            assert fault.expect_kind in KINDS
        else:
            assert (fault.expect_state, fault.expect_kind in SKIP_REASONS) == ("skipped", True)
    assert any(fault.path == LONG_URL_PATH for fault in FAULTS)


async def _status_or_error(session: aiohttp.ClientSession, url: str) -> int | str:
    """The status `url` answers with in 0.5 s, or the name of what went wrong instead."""
    try:
        async with asyncio.timeout(0.5), session.get(url, allow_redirects=False) as response:
            return response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return type(exc).__name__


async def test_every_catalogued_path_is_served(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    fetched = [fault for fault in FAULTS if fault.expect_state != "skipped"]
    async with asyncio.timeout(LIMIT):
        outcomes = await asyncio.gather(
            *(_status_or_error(session, server.url(fault.path)) for fault in fetched)
        )
    found = dict(zip((fault.path for fault in fetched), outcomes, strict=True))
    missing = [f.path for f in fetched if found[f.path] == 404 and f.expect_kind != "http_status"]
    assert missing == []
    assert found["/refused"] == "ClientConnectorError"
    assert found["/raw/never-answers"] == "TimeoutError"
    assert found["/ok"] == 200


async def test_index_links_to_every_catalogued_fault(
    server: FaultServer, session: aiohttp.ClientSession
) -> None:
    async with asyncio.timeout(LIMIT):
        status, _, body = await get(session, server.url("/"))
    assert status == 200
    assert hrefs(body) == [server.url(fault.path) for fault in FAULTS]
