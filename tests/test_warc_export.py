"""`crawler export DB -f warc`: every stored body comes back, read with warcio, as a WARC/1.1
response record with the status line and headers the server sent, followed by the request
record that asked for it; each record is checked against the database."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from warcio.archiveiterator import ArchiveIterator

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.results.warc import REWRITTEN_HEADERS
from tests.conftest import RunCli, rows
from tests.databases import Target
from tests.sites import html_page
from tests.spiders import FollowAllSpider

PNG: Final = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LINKS: Final = ("/gz", "/missing", "/moved", "/image.png", "/cookies", "/teapot")


def exchange_site() -> web.Application:
    """Pages that exercise the archive: a gzip-encoded page, an error page with a body, a
    redirect, a binary body, repeated headers and a status with its own reason phrase."""

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        headers = {"X-Test": path.strip("/") or "index"}
        if path == "/":
            links = "".join(f'<a href="{link}">{link}</a>' for link in LINKS)
            return web.Response(text=html_page(links), content_type="text/html", headers=headers)
        if path == "/gz":
            body = gzip.compress(html_page("<p>compressed</p>").encode())
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=body, content_type="text/html", headers=headers)
        if path == "/missing":
            return web.Response(status=404, text="no such page", headers=headers)
        if path == "/moved":
            raise web.HTTPFound("/target", headers=headers)
        if path == "/image.png":
            return web.Response(body=PNG, content_type="image/png", headers=headers)
        if path == "/cookies":
            response = web.Response(text=html_page("<p>c</p>"), content_type="text/html")
            response.headers["X-Name"] = "caf\u00e9"  # aiohttp sends it as UTF-8
            response.headers.add("Set-Cookie", "a=1; Path=/")
            response.headers.add("Set-Cookie", "b=2; Path=/")
            return response
        if path == "/teapot":
            return web.Response(status=299, reason="Fine Indeed", text="odd", headers=headers)
        return web.Response(text=html_page("<p>target</p>"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.fixture
async def archived_crawl(database: Target) -> AsyncIterator[Target]:
    """A crawl with stored bodies, in a SQLite file and on PostgreSQL."""
    async with TestServer(exchange_site(), host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/"))])
        db = database
        settings = {"store_body": True, "obey_robots": False, "progress_interval": 60.0}
        await crawl(spider, db=db, settings=settings)
        yield db


@dataclass(frozen=True)
class Record:
    """One WARC record as read back: its type, WARC headers, HTTP headers and content."""

    type: str
    warc: Any
    http: Any
    content: bytes


def read_warc(data: bytes) -> list[Record]:
    """Every record of a WARC file, read with warcio, which checks each block and payload
    digest as it reads (a mismatch raises)."""
    return [
        Record(r.rec_type, r.rec_headers, r.http_headers, r.content_stream().read())
        for r in ArchiveIterator(io.BytesIO(data), check_digests="raise")
    ]


def stored(db: Target) -> list[dict[str, Any]]:
    """The pages with a body, with the latest changed fetch of their request, in page order."""
    sql = """
        SELECT p.final_url, p.status, p.body, f.fetched_at, f.http_version, f.reason,
               f.headers, f.request_headers, r.method
        FROM pages AS p JOIN requests AS r ON r.id = p.request_id
        JOIN fetches AS f ON f.id = (SELECT max(id) FROM fetches
                                     WHERE request_id = p.request_id AND changed = 1)
        WHERE p.body IS NOT NULL ORDER BY p.id
    """
    names = ("url", "status", "body", "fetched_at", "version", "reason", "headers", "sent")
    return [{**dict(zip(names, row, strict=False)), "method": row[-1]} for row in rows(db, sql)]


def as_read(value: str, wire: str) -> str:
    """A stored header value as warcio reads it back from the bytes that went over the wire
    (`wire`: their encoding): UTF-8 if they are, else latin-1."""
    raw = value.encode(wire)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def pairs(records: list[Record]) -> Iterator[tuple[Record, Record]]:
    assert len(records) % 2 == 1
    return zip(records[1::2], records[2::2], strict=True)


async def test_every_stored_body_is_a_response_and_request_record(
    archived_crawl: Target, run_cli: RunCli, tmp_path: Path
) -> None:
    db = archived_crawl
    out = tmp_path / "crawl.warc.gz"
    result = await run_cli("export", str(db), "-f", "warc", "-o", str(out))
    assert result.code == 0, result.stderr
    pages = stored(db)
    assert len(pages) == 7  # "/" and its six links (/moved stored as its target)
    assert f"exported {len(pages)} pages" in result.stderr
    data = out.read_bytes()
    assert data[:2] == b"\x1f\x8b"  # gzip, one member per record
    records = read_warc(data)
    assert records[0].type == "warcinfo"
    assert records[0].warc.protocol == "WARC/1.1"
    assert b"software: crawler/" in records[0].content
    assert len(records) == 1 + 2 * len(pages)
    for page, (response, request) in zip(pages, pairs(records), strict=True):
        check_response(page, response)
        check_request(page, request, response)
    assert not out.with_name(out.name + ".part").exists()


def check_response(page: dict[str, Any], record: Record) -> None:
    body = gzip.decompress(page["body"])
    assert record.type == "response"
    assert record.warc.protocol == "WARC/1.1"
    assert record.warc.get_header("WARC-Target-URI") == page["url"]
    assert record.warc.get_header("WARC-Date").startswith(
        page["fetched_at"][:19]  # same second; WARC-Date is UTC with a Z
    )
    assert record.warc.get_header("WARC-Payload-Digest").startswith("sha1:")
    http = record.http
    assert http.protocol == f"HTTP/{page['version']}"
    assert http.statusline == f"{page['status']} {page['reason']}"
    assert record.content == body
    expected = []
    for name, value in json.loads(page["headers"]):
        read = as_read(value, "latin-1")
        if name.lower() not in {h.lower() for h in REWRITTEN_HEADERS}:
            expected.append((name, read))
        elif name.lower() != "content-length" or value != str(len(body)):
            expected.append((f"X-Crawler-Original-{name}", read))
    assert http.headers == [*expected, ("Content-Length", str(len(body)))]


def check_request(page: dict[str, Any], record: Record, response: Record) -> None:
    assert record.type == "request"
    assert record.warc.get_header("WARC-Target-URI") == page["url"]
    assert record.warc.get_header("WARC-Concurrent-To") == response.warc.get_header(
        "WARC-Record-ID"
    )
    path = page["url"].split("/", 3)[3]
    assert record.http.protocol == page["method"]
    assert record.http.statusline == f"/{path} HTTP/{page['version']}"
    sent = [(name, as_read(value, "utf-8")) for name, value in json.loads(page["sent"])]
    assert record.http.headers == sent
    assert record.content == b""


async def test_what_the_server_sent_is_what_the_archive_says(
    archived_crawl: Target, run_cli: RunCli, tmp_path: Path
) -> None:
    """The captured exchange is the real one, not only consistent with the database."""
    out = tmp_path / "crawl.warc"
    result = await run_cli("export", str(archived_crawl), "-o", str(out))
    assert result.code == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(b"WARC/1.1\r\n")  # .warc: not compressed
    records = {
        (r.type, r.warc.get_header("WARC-Target-URI").split("/", 3)[3]): r
        for r in read_warc(data)
        if r.type != "warcinfo"
    }
    gz = records["response", "gz"]
    assert gz.http.get_header("X-Test") == "gz"
    assert gz.http.get_header("X-Crawler-Original-Content-Encoding") == "gzip"
    assert gz.http.get_header("Content-Encoding") is None
    assert b"compressed" in gz.content
    assert records["response", "missing"].http.statusline == "404 Not Found"
    assert records["response", "teapot"].http.statusline == "299 Fine Indeed"
    assert records["response", "image.png"].content == PNG
    cookies = [v for n, v in records["response", "cookies"].http.headers if n == "Set-Cookie"]
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]
    assert records["response", "cookies"].http.get_header("X-Name") == "caf\u00e9"
    assert ("response", "moved") not in records  # the page is stored under its final URL
    assert records["response", "target"].http.get_header("X-Test") is None
    sent = records["request", "gz"].http
    assert sent.get_header("User-Agent", "").startswith("crawler/")
    assert "gzip" in sent.get_header("Accept-Encoding", "")


async def test_export_refusals_are_one_line(
    archived_crawl: Target, run_cli: RunCli, tmp_path: Path
) -> None:
    with_type = await run_cli("export", str(archived_crawl), "-f", "warc", "-t", "page")
    assert with_type.code == 2 and "leave out -t" in with_type.stderr
    no_type = await run_cli("export", str(archived_crawl))
    assert no_type.code == 2 and "-t TYPE" in no_type.stderr
    if not isinstance(archived_crawl, Path):
        return  # the rest copies a SQLite file without its bodies
    empty = tmp_path / "no-bodies.db"
    with sqlite3.connect(archived_crawl) as source, sqlite3.connect(empty) as copy:
        source.backup(copy)
        copy.execute("UPDATE pages SET body = NULL")
    refused = await run_cli("export", str(empty), "-f", "warc", "-o", str(tmp_path / "x.warc.gz"))
    assert refused.code == 2
    assert "holds no page bodies" in refused.stderr and "store_body" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.warc.gz").exists()


async def test_warc_to_stdout(archived_crawl: Target) -> None:
    command = [sys.executable, "-m", "crawler", "export", str(archived_crawl), "-f", "warc"]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    records = read_warc(done.stdout)
    assert len(records) == 1 + 2 * len(stored(archived_crawl))
