"""Writing the stored pages of a crawl database as a WARC/1.1 file (ISO 28500), with warcio.

Each page whose body was stored (`store_body`) becomes a `response` record — the status line
and headers as received, then the body — followed by the `request` record that asked for
it (method, path, the headers as sent), linked to it by `WARC-Concurrent-To`; the file
starts with a `warcinfo` record. The exchange comes from the latest changed `fetches` row
of the page's request: the one whose body `pages.body` holds.

The crawler stores bodies decoded (decompressed), so a response's `Content-Encoding` and
`Transfer-Encoding` no longer describe the bytes that follow them: they are kept under
`X-Crawler-Original-Content-Encoding` / `-Transfer-Encoding`, and `Content-Length` (the
original kept the same way when it differs) gives the stored length, so that a replay tool
reads the body as it is. A page fetched before its headers were kept gets the headers the
database knows: `Content-Type` and `Content-Length`.

Header bytes are written back as they went over the wire: the response's as received (the
crawler keeps them as latin-1 text, one character per byte), the request's as aiohttp sent
them (UTF-8); warcio's own writer would %-encode any byte outside ASCII.
"""

from __future__ import annotations

import http
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter
from yarl import URL

from crawler.store.archive import ARCHIVE_COLUMNS, archived_pages
from crawler.store.pages import gunzip
from crawler.version import __version__

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection

__all__ = ["REWRITTEN_HEADERS", "write_warc"]

REWRITTEN_HEADERS: Final = ("Content-Encoding", "Transfer-Encoding", "Content-Length")
"""Response headers that describe the bytes on the wire, not the stored (decoded) body."""
_ORIGINAL: Final = "X-Crawler-Original-"


def write_warc(conn: ReadConnection, out: BinaryIO, *, gzip: bool, filename: str) -> int:
    """Write every page with a stored body to `out` as WARC/1.1 records; return how many
    pages were written. `gzip` compresses each record on its own (a `.warc.gz`).

    Raises:
        sqlite3.Error: reading the database failed.
        DamagedBody: a stored body is not valid gzip.
    """
    writer = WARCWriter(out, gzip=gzip, warc_version="1.1")
    info = {
        "software": f"crawler/{__version__}",
        "format": "WARC File Format 1.1",
        "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
    }
    writer.write_record(writer.create_warcinfo_record(filename, info))
    count = 0
    for row in archived_pages(conn):
        page = dict(zip(ARCHIVE_COLUMNS, row, strict=True))
        _write_exchange(writer, page)
        count += 1
    return count


def _write_exchange(writer: WARCWriter, page: dict[str, Any]) -> None:
    """The response record of one page, then its request record."""
    body = gunzip(page["body"])
    url = str(page["url"])
    date = _warc_date(str(page["fetched_at"]))
    version = page["http_version"] or "1.1"
    status = int(page["status"])
    reason = page["reason"] if page["reason"] is not None else _phrase(status)
    response_headers = _WireHeaders(
        f"{status} {reason}".rstrip(),
        _response_headers(page, len(body)),
        protocol=f"HTTP/{version}",
    )
    response = writer.create_warc_record(
        url,
        "response",
        payload=BytesIO(body),
        length=len(body),
        http_headers=response_headers,
        warc_headers_dict={"WARC-Date": date},
    )
    target = URL(url, encoded=True)
    sent = _pairs(page["request_headers"])
    if not sent:
        sent = [("Host", target.raw_authority)]
    request_headers = _WireHeaders(
        f"{page['method'] or 'GET'} {target.raw_path_qs} HTTP/{version}",
        sent,
        is_http_request=True,
        encoding="utf-8",
    )
    request = writer.create_warc_record(
        url,
        "request",
        http_headers=request_headers,
        warc_headers_dict={
            "WARC-Date": date,
            "WARC-Concurrent-To": response.rec_headers.get_header("WARC-Record-ID"),
        },
    )
    writer.write_record(response)
    writer.write_record(request)


class _WireHeaders(StatusAndHeaders):  # type: ignore[misc]  # warcio has no type hints
    """HTTP headers that warcio writes in `encoding` (see the module doc)."""

    def __init__(self, *args: Any, encoding: str = "latin-1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire_encoding = encoding

    def compute_headers_buffer(self, header_filter: Any = None) -> None:
        self.headers_buff = self.to_bytes(header_filter, encoding=self.wire_encoding)


def _response_headers(page: dict[str, Any], length: int) -> list[tuple[str, str]]:
    """The headers as received, with those of the wire encoding set aside (see above)."""
    received = _pairs(page["headers"])
    if not received:
        content_type = str(page["content_type"])
        if page["encoding"]:
            content_type += f"; charset={page['encoding']}"
        return [("Content-Type", content_type), ("Content-Length", str(length))]
    headers: list[tuple[str, str]] = []
    rewritten = {name.lower() for name in REWRITTEN_HEADERS}
    for name, value in received:
        if name.lower() not in rewritten:
            headers.append((name, value))
        elif name.lower() != "content-length" or value.strip() != str(length):
            headers.append((_ORIGINAL + name, value))
    headers.append(("Content-Length", str(length)))
    return headers


def _pairs(text: object) -> list[tuple[str, str]]:
    """A JSON array of [name, value] pairs as stored, or [] for NULL."""
    if not isinstance(text, str):
        return []
    pairs: Sequence[Iterable[str]] = json.loads(text)
    return [(str(name), str(value)) for name, value in pairs]


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _warc_date(stored: str) -> str:
    """A stored `*_at` time (ISO 8601 with an offset) as a WARC-Date (UTC, `Z`)."""
    moment = datetime.fromisoformat(stored).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
