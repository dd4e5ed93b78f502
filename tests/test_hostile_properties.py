"""Property-based tests of hostile input: no response and no item may end a crawl.

Hypothesis builds responses byte by byte (status line, header names and values, charset
labels, content codings over matching or mismatched bodies, lying lengths and framing,
redirects, robots.txt, sitemaps, hostile HTML) and items (lone surrogates, NUL, huge ints,
NaN, bytes, sets, non-string keys, nesting deeper than any recursion limit). Each example is
one small crawl against `tests.raw_http.RawHttpServer`, in this process, after which:

- the crawl returned (no exception escaped) and its run is `finished`;
- every discovered URL is in `requests` in a terminal state, with a reason when it was not
  fetched, `crawls.stats` equals the tables and `PRAGMA integrity_check` passes
  (`tests.invariants.assert_crawl_invariant`);
- no log record carries a traceback: callbacks here never raise, and an unexpected
  exception inside the crawler is one warning line, its traceback stored in `errors`
  (kind `internal`), while the crawl goes on.

The decoding, header and link functions the crawl relies on are also checked alone, with
many more examples per second, and each bug these tests found has an example test below.
Bugs found in other modules have regression tests of their own ("Found elsewhere"). A
handful of fixed cases run through the command line as a subprocess.

Profiles (tests/conftest.py): the default one is derandomized and takes about a minute;
`HYPOTHESIS_PROFILE=long` runs 100,000 examples per test.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import math
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import pytest
from hypothesis import currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

from crawler import Request, RequestBatch, Response, Spider, crawl, text_of
from crawler.links import canonical_parts, canonical_url, fingerprint, try_canonical_url
from crawler.spider.http import decode_body, detect_encoding
from crawler.spider.sitemaps import SitemapSpider, iter_sitemap
from tests.conftest import RunCli, rows
from tests.hostile_strategies import (
    ALL_CODEC_NAMES,
    CASE_PATHS,
    NON_TEXT_CODECS,
    PORT_TOKEN,
    AnyRecord,
    HostileResponse,
    TypedRecord,
    YieldedRequest,
    content_types,
    hostile_responses,
    hrefs,
    html_bodies,
    items,
    nested,
    redirects,
    robots_bodies,
    sitemap_bodies,
    yielded_requests,
)
from tests.invariants import assert_all_accounted_for, assert_crawl_invariant
from tests.raw_http import RawHttpServer, raw_response

FAST: Final[dict[str, object]] = {
    "obey_robots": False,
    "autothrottle": False,  # its delays follow response times: a slow case would slow the rest
    "max_retries": 1,
    "backoff_base": 0.0,
    "backoff_max": 0.0,
    "request_timeout": 1.0,
    "connect_timeout": 1.0,
    "retry_after_max": 0.05,  # any Retry-After is honoured, briefly
    "retry_after_inline": 0.0,  # and a positive one sends the request back to the frontier
    "crawl_delay_max": 0.05,
    "robots_error_cooldown": 0.05,  # a site whose robots.txt failed waits this long, twice
    "write_interval": 0.005,
    "progress_interval": 60.0,
    "concurrency": 4,
    "concurrency_per_host": 4,
    "max_redirects": 3,
    "max_depth": 2,
    "max_pages": 25,
    "max_size": 64 * 1024,
    "blocking_warning": 0.0,
    "shutdown_grace": 1.0,
}
"""Settings that keep one case to a few pages and tens of milliseconds."""
CASE_LIMIT: Final = 30.0
"""Seconds one case's crawl may take before it counts as hung (the slowest honest case, a
few timeouts, takes about 4 s)."""
PAGE = HostileResponse(
    b"HTTP/1.1 200 OK",
    ((b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Length", b"42")),
    b"<html><title>Fine</title><a href=/p0>p</a>",
)
"""A plain page, for the paths a case does not make hostile."""


def scaled(share: float) -> settings:
    """The loaded profile's settings with `share` times its `max_examples` (a cheap test
    takes more examples than a crawl)."""
    loaded = settings.default
    assert loaded is not None
    return settings(max_examples=max(1, round(loaded.max_examples * share)))


# --- Spiders ------------------------------------------------------------------------------


class ResponseSpider(Spider):
    """Reads what a usual spider reads (text, title, a header, links) from every response of
    any content type, yields it as an item and follows every link."""

    name = "hostile_responses"
    any_content_callbacks: ClassVar[Sequence[str]] = ("parse",)

    async def parse(self, response: Response) -> AsyncIterator[dict[str, Any] | RequestBatch]:
        yield {
            "url": response.url,
            "status": response.status,
            "title": text_of(response.css_first("title")),
            "content_type": response.headers.get("Content-Type"),
            "encoding": response.encoding,
            "start": response.text[:40],
        }
        yield response.follow_all()
        yield response.follow_all(response.css("a"), callback="leaf")

    async def leaf(self, response: Response) -> AsyncIterator[RequestBatch]:
        yield response.follow_all()


FIXED_ITEMS: Final[Mapping[str, Sequence[object]]] = {
    "/": [
        {"lone": "\ud800", "nul": "a\x00b", "huge": 2**64, "nan": math.nan},
        {"deep": nested(5000)},
        {1: "int key", None: "none key", (1, 2): "tuple key"},
        AnyRecord(value={"set": {1, 2}, "bytes": b"\xff"}),
        TypedRecord(title="\udfff", price=math.inf, count=10**30, tags=["\x00"]),
    ]
}
"""Items that `ItemSpider` yields on `/` unless a test registers others (the command-line
case)."""


class ItemSpider(Spider):
    """Yields the items registered for each page's path, then follows its links."""

    name = "hostile_items"
    item_types: ClassVar[Sequence[type]] = (AnyRecord, TypedRecord)
    # Keys of any value for one type only: an item missing its key is refused before the
    # writer sees it, and the others must reach the writer.
    dedupe_items_by: ClassVar[Mapping[str, Sequence[str]]] = {"any_record": ("k",)}
    registry: ClassVar[Mapping[str, Sequence[object]]] = FIXED_ITEMS

    async def parse(self, response: Response) -> AsyncIterator[object]:
        for item in self.registry.get(_path_of(response.url), ()):
            yield item
        yield response.follow_all()


class RequestSpider(Spider):
    """Yields the requests registered for each page's path (hostile URL, meta, priority,
    headers), then follows the page's links (which a refused request must not hide)."""

    name = "hostile_requests"
    registry: ClassVar[Mapping[str, Sequence[object]]] = {}

    async def parse(self, response: Response) -> AsyncIterator[Request | RequestBatch]:
        for wanted in self.registry.get(_path_of(response.url), ()):
            assert isinstance(wanted, YieldedRequest)
            yield Request(
                wanted.url,
                callback=wanted.callback,
                meta=wanted.meta,  # type: ignore[arg-type]
                priority=wanted.priority,  # type: ignore[arg-type]
                headers=wanted.headers,  # type: ignore[arg-type]
            )
        yield response.follow_all()

    async def leaf(self, response: Response) -> AsyncIterator[RequestBatch]:
        yield response.follow_all()


class HostileSitemapSpider(SitemapSpider):
    """Reads its `sitemap_urls` (robots.txt, sitemaps); what they list is parsed as pages."""

    name = "hostile_sitemaps"

    async def parse(self, response: Response) -> AsyncIterator[RequestBatch]:
        yield response.follow_all()


def _path_of(url: str) -> str:
    return urlsplit(url).path or "/"


# --- The harness --------------------------------------------------------------------------


class _Records(logging.Handler):
    """Keeps every record of WARNING or above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Outcome:
    """What one case's crawl left: its database, log records and the server's hits."""

    db: Path
    records: list[logging.LogRecord]
    hits: dict[str, int]


@dataclass
class Harness:
    """One event loop and one raw server for a module's worth of cases."""

    runner: asyncio.Runner
    server: RawHttpServer
    directory: Path

    def crawl(
        self,
        spider: type[Spider],
        routes: Mapping[str, HostileResponse | bytes],
        *,
        registry: Mapping[str, Sequence[object]] | None = None,
        settings: Mapping[str, object] | None = None,
        start: Sequence[str] = ("/",),
        unlinked: Mapping[str, HostileResponse | bytes] | None = None,
    ) -> Outcome:
        """Serve `routes` (plus `/`, linking to them, and `unlinked`, which it does not link
        to) and crawl them from `start` with a subclass of `spider` (holding `registry`), in
        a fresh database."""
        port = self.server.port
        served = {**routes, **(unlinked or {})}
        self.server.route(
            {p: r if isinstance(r, bytes) else r.raw(port) for p, r in served.items()},
            unlinked=unlinked or (),
        )
        db = self.directory / "case.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        urls = [self.server.url(path) for path in start]
        attrs: dict[str, object] = {
            "name": spider.name,
            "allowed_domains": ("127.0.0.1",),
            "sitemap_urls" if issubclass(spider, SitemapSpider) else "start_urls": urls,
            "__module__": spider.__module__,
        }
        if registry is not None:
            attrs["registry"] = registry
        bound = type(spider.__name__, (spider,), attrs)
        handler = _Records()
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            self.runner.run(self._crawl(bound, db, {**FAST, **(settings or {})}))
        finally:
            root.removeHandler(handler)
        return Outcome(db, handler.records, dict(self.server.hits))

    async def _crawl(self, spider: type[Spider], db: Path, settings: Mapping[str, object]) -> None:
        async with asyncio.timeout(CASE_LIMIT):
            await crawl(spider, db=db, settings=settings)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    runner = asyncio.Runner()
    server = RawHttpServer()
    runner.run(server.__aenter__())
    try:
        yield Harness(runner, server, tmp_path_factory.mktemp("hostile"))
    finally:
        runner.run(server.__aexit__(None, None, None))
        runner.close()


def assert_survived(
    outcome: Outcome, *, sitemaps: bool = False, refused_requests: bool = False
) -> None:
    """The invariant after every case (see the module docstring).

    With `sitemaps`, a sitemap that `iter_sitemap` refuses (ValueError) may end its
    `parse_sitemap` callback as a spider error, logged with its traceback: that is how a
    broken sitemap is recorded (tests/test_sitemaps.py). With `refused_requests`, a request
    the frontier refuses (meta that JSON cannot hold, an unknown callback) may be a spider
    error, logged without a traceback: the spider's own mistake.
    """
    traced = [
        f"{r.name}: {r.getMessage()}"
        for r in outcome.records
        if (r.exc_info or r.stack_info) and not (sitemaps and _refused_sitemap(r))
    ]
    assert traced == [], traced
    assert_crawl_invariant(outcome.db)
    spider_errors = [
        (url, callback, message)
        for url, callback, message in rows(
            outcome.db, "SELECT url, callback, message FROM errors WHERE kind = 'spider'"
        )
        if not (sitemaps and callback == "parse_sitemap" and message.startswith("ValueError: "))
        and not (refused_requests and message.startswith("request "))
    ]
    assert spider_errors == [], spider_errors  # these callbacks never raise: the crawler did
    for (message,) in rows(outcome.db, "SELECT message FROM errors WHERE kind = 'internal'"):
        _event(f"internal error: {str(message).splitlines()[0][:80]}")
    outcomes = rows(outcome.db, "SELECT state, reason FROM requests WHERE url LIKE '%/p_'")
    for state, reason in outcomes:  # what the cases met, for --hypothesis-show-statistics
        _event(f"{state} {str(reason or '').split(':', 1)[0]}".strip())


def _event(text: str) -> None:
    """Count `text` in Hypothesis's statistics (when run by Hypothesis)."""
    if currently_in_test_context():
        event(text)


def _refused_sitemap(record: logging.LogRecord) -> bool:
    """Whether a log record is parse_sitemap's ValueError for a sitemap it cannot read."""
    exc = record.exc_info[1] if record.exc_info else None
    return "callback parse_sitemap failed" in record.getMessage() and isinstance(exc, ValueError)


# --- Whole crawls -------------------------------------------------------------------------


@scaled(1.0)
@given(responses=st.lists(hostile_responses(), min_size=1, max_size=len(CASE_PATHS)))
def test_any_response_leaves_the_crawl_running(
    harness: Harness, responses: list[HostileResponse]
) -> None:
    routes = dict(zip(CASE_PATHS, responses, strict=False))
    outcome = harness.crawl(ResponseSpider, routes)
    note(f"hits: {outcome.hits}")
    assert_survived(outcome)


@scaled(0.5)
@given(first=redirects(), second=st.one_of(redirects(), hostile_responses()))
def test_any_redirect_leaves_the_crawl_running(
    harness: Harness, first: HostileResponse, second: HostileResponse
) -> None:
    outcome = harness.crawl(ResponseSpider, {"/p0": first, "/p1": second, "/p2": PAGE})
    note(f"hits: {outcome.hits}")
    assert_survived(outcome)


@scaled(0.5)
@given(robots=hostile_responses(body=robots_bodies()), page=hostile_responses())
def test_any_robots_txt_leaves_the_crawl_running(
    harness: Harness, robots: HostileResponse, page: HostileResponse
) -> None:
    outcome = harness.crawl(
        ResponseSpider,
        {"/robots.txt": robots, "/p0": page, "/p1": PAGE},
        settings={"obey_robots": True},
    )
    note(f"hits: {outcome.hits}")
    assert_survived(outcome)


@scaled(0.5)
@given(
    sitemap=hostile_responses(body=sitemap_bodies()),
    index=hostile_responses(body=sitemap_bodies()),
    robots=hostile_responses(body=robots_bodies()),
)
def test_any_sitemap_leaves_the_crawl_running(
    harness: Harness, sitemap: HostileResponse, index: HostileResponse, robots: HostileResponse
) -> None:
    outcome = harness.crawl(
        HostileSitemapSpider,
        {"/p0": sitemap, "/p1": index, "/robots.txt": robots, "/p2": PAGE},
        start=("/robots.txt", "/p0"),
    )
    note(f"hits: {outcome.hits}")
    assert_survived(outcome, sitemaps=True)


@scaled(1.0)
@given(
    on_index=st.lists(items(), min_size=1, max_size=4),
    on_page=st.lists(items(), max_size=2),
)
def test_any_item_leaves_the_crawl_running(
    harness: Harness, on_index: list[object], on_page: list[object]
) -> None:
    registry = {"/": on_index, "/p0": on_page}
    outcome = harness.crawl(ItemSpider, {"/p0": PAGE}, registry=registry)
    assert_survived(outcome)


@scaled(0.5)
@given(requests=st.lists(yielded_requests(), min_size=1, max_size=4))
def test_any_yielded_request_leaves_the_crawl_running(
    harness: Harness, requests: list[YieldedRequest]
) -> None:
    port = str(harness.server.port)
    wanted = [
        YieldedRequest(r.url.replace(PORT_TOKEN, port), r.meta, r.priority, r.headers, r.callback)
        for r in requests
    ]
    outcome = harness.crawl(RequestSpider, {"/p0": PAGE, "/p1": PAGE}, registry={"/": wanted})
    assert_survived(outcome, refused_requests=True)


# --- The functions the crawl relies on, alone ---------------------------------------------

PAGE_URL: Final = "http://127.0.0.1:8000/dir/page.html"


def _response(body: bytes, content_type: bytes, url: str = PAGE_URL) -> Response:
    header = content_type.decode("utf-8", "surrogateescape")  # as aiohttp decodes headers
    return Response(
        url=url, status=200, headers={"Content-Type": header}, body=body, request=Request(url)
    )


@scaled(5.0)
@given(body=st.one_of(html_bodies(), st.binary(max_size=100)), content_type=content_types())
def test_text_always_decodes_to_storable_text(body: bytes, content_type: bytes) -> None:
    response = _response(body, content_type)
    info = codecs.lookup(response.encoding)
    assert info._is_text_encoding, response.encoding
    text = response.text
    text.encode("utf-8")  # no lone surrogate: it can be parsed, stored and printed
    assert "\x00" not in text


@scaled(5.0)
@given(body=html_bodies(), content_type=content_types(), url=st.sampled_from([PAGE_URL]))
def test_links_never_raise(body: bytes, content_type: bytes, url: str) -> None:
    response = _response(body, content_type, url)
    links = response.links()
    for link in links:  # each is stored as it is, in `links` and in `requests`: a fixed point
        try:
            canonical = canonical_parts(link).url
        except (ValueError, TypeError, UnicodeError):
            continue  # recorded as an invalid URL, as written
        assert canonical == link
    assert len(response.follow_all(response.css("a"))) <= len(response.css("a"))


@scaled(5.0)
@given(href=hrefs(), base=st.one_of(hrefs(), st.just(PAGE_URL)))
def test_urls_either_resolve_or_raise_value_error(href: str, base: str) -> None:
    try:
        canonical_url(href, base)
    except ValueError:
        assert try_canonical_url(href, base) is None
    else:
        assert try_canonical_url(href, base) is not None


@scaled(5.0)
@given(body=sitemap_bodies())
def test_a_sitemap_either_parses_or_raises_value_error(body: bytes) -> None:
    try:
        entries = list(iter_sitemap(body))
    except ValueError:
        return
    assert all(isinstance(entry.loc, str) for entry in entries)


# --- Bugs the properties found, one example each ------------------------------------------


@pytest.mark.parametrize("label", NON_TEXT_CODECS)
def test_a_charset_naming_a_codec_that_is_not_a_text_encoding_is_unknown(label: str) -> None:
    # charset=base64 crashed the crawl: bytes.decode("base64") raises LookupError
    body = "<p>café</p>".encode()
    response = _response(body, f"text/html; charset={label}".encode())
    assert (response.encoding, response.text) == ("utf-8", "<p>café</p>")
    in_meta = f"<meta charset={label}><p>café</p>".encode()
    assert _response(in_meta, b"text/html").encoding == "utf-8"


@pytest.mark.parametrize(
    ("label", "body"),
    [
        ("idna", b"<p>caf\xc3\xa9</p>"),  # refuses errors="replace": UnicodeError
        ("punycode", b"<p>caf\xc3\xa9</p>"),  # the same, as UnicodeDecodeError
        ("undefined", b"<p>cafe</p>"),  # refuses to decode anything
        ("unicode_escape", b"<p>\\ud800</p>"),  # decodes to a lone surrogate
        ("raw_unicode_escape", b"<p>\\udfff</p>"),
        ("utf-7", b"<p>+2AA-</p>"),
    ],
)
def test_a_charset_naming_a_codec_no_page_is_written_in_is_unknown(label: str, body: bytes) -> None:
    response = _response(body, f"text/html; charset={label}".encode())
    assert response.encoding in ("utf-8", "cp1252")
    response.text.encode("utf-8")  # no lone surrogate


def test_every_python_codec_name_as_a_charset_still_decodes() -> None:
    body = b"<p>\\ud800 \\N{ +2AA- \xff\xfe caf\xc3\xa9</p>"
    for label in ALL_CODEC_NAMES:
        in_header = _response(body, f"text/html; charset={label}".encode())
        in_meta = _response(f"<meta charset={label}>".encode() + body, b"text/html")
        for response in (in_header, in_meta):
            assert codecs.lookup(response.encoding)._is_text_encoding, label
            response.text.encode("utf-8")
        assert decode_body(body, detect_encoding(body, f"text/html; charset={label}"))


@pytest.mark.parametrize("label", ["base64", "x-made-up", "rot13"])
def test_a_sitemap_declaring_an_unknown_encoding_is_refused_with_value_error(label: str) -> None:
    # expat raised LookupError, which parse_sitemap's callers do not expect
    body = f'<?xml version="1.0" encoding="{label}"?><urlset></urlset>'.encode()
    with pytest.raises(ValueError, match="unknown encoding"):
        list(iter_sitemap(body))


def test_a_link_that_cannot_be_resolved_is_recorded_as_written(harness: Harness) -> None:
    # "//127.0.0.1:@x@/p0" joins to no valid URL, so extract_links keeps it as written, but
    # canonical_parts took it (yarl calls "//host/path" absolute) and rewrote it: the
    # frontier recorded another string than the `links` table, a discovered URL unaccounted
    body = b"<a href='//127.0.0.1:@x@/p0'>a</a><a href='//:@/'>b</a>"
    page = HostileResponse(b"HTTP/1.1 200 OK", ((b"Content-Length", b"%d" % len(body)),), body)
    outcome = harness.crawl(ResponseSpider, {"/p0": page})
    assert_survived(outcome)
    invalid = "SELECT url FROM requests WHERE reason = 'invalid_url' ORDER BY url"
    assert rows(outcome.db, invalid) == [("//127.0.0.1:@x@/p0",), ("//:@/",)]
    with pytest.raises(ValueError, match="not an absolute URL"):
        canonical_parts("//127.0.0.1/p0")


def test_a_url_with_a_lone_surrogate_is_invalid_and_has_a_fingerprint() -> None:
    # fingerprint() encoded strictly: UnicodeEncodeError while the frontier recorded a
    # spider's Request("\ud800") as invalid; and yarl dropped a lone surrogate from a path
    # without a word, admitting another URL than the one asked for
    assert fingerprint("\ud800") != fingerprint("\ufffd")
    for url in ("\ud800", "http://127.0.0.1/p1\udc80", "http://127.0.0.1/?q=\ud83d"):
        with pytest.raises(ValueError, match="lone surrogate"):
            canonical_parts(url)


def test_a_request_url_with_a_lone_surrogate_is_recorded_as_an_invalid_url(
    harness: Harness,
) -> None:
    lone = [
        YieldedRequest("\ud800", None, 0, None, None),
        YieldedRequest(harness.server.url("/p1\udc80"), None, 0, None, None),
    ]
    outcome = harness.crawl(RequestSpider, {"/p0": PAGE, "/p1": PAGE}, registry={"/": lone})
    assert_survived(outcome)
    assert rows(outcome.db, "SELECT count(*) FROM errors WHERE kind = 'internal'") == [(0,)]
    invalid = rows(outcome.db, "SELECT url FROM requests WHERE reason = 'invalid_url'")
    assert sorted(str(url)[-3:] for (url,) in invalid) == ["p1\ufffd", "\ufffd"]


# --- Found elsewhere --------------------------------------------------------------------
# Bugs the properties found in other modules (fixed in ae96929), one regression test each.


def test_an_item_nested_past_the_recursion_limit_is_an_item_error(harness: Harness) -> None:
    # RecursionError from json.dumps (callbacks.serialise_item) and repr (items._mismatch)
    # escaped both: the callback ended as a spider error, its later items and links lost
    deep = nested(5000)
    registry = {
        "/": [
            {"deep": deep, "k": 1},
            TypedRecord(title="t", price=1.0, count=1, tags=deep),  # type: ignore[arg-type]
            {"after": "the deep ones", "k": 2},
        ]
    }
    outcome = harness.crawl(ItemSpider, {"/p0": PAGE}, registry=registry)
    assert_survived(outcome)
    assert rows(outcome.db, "SELECT data FROM items") == [('{"after":"the deep ones","k":2}',)]
    assert rows(outcome.db, "SELECT count(*) FROM requests WHERE url LIKE '%/p0'") == [(1,)]


def test_an_int_too_large_for_a_float_field_is_an_item_error(harness: Harness) -> None:
    # items._convert_scalar's float() raised OverflowError, which ended the callback
    too_large = TypedRecord(title="t", price=10**400, count=1, tags=[])
    registry = {"/": [too_large, {"after": "the large one", "k": 1}]}
    outcome = harness.crawl(ItemSpider, {"/p0": PAGE}, registry=registry)
    assert_survived(outcome)
    assert rows(outcome.db, "SELECT field FROM item_errors") == [("price",)]
    assert rows(outcome.db, "SELECT count(*) FROM items") == [(1,)]


def test_a_refused_request_does_not_hide_a_later_link_to_its_url(harness: Harness) -> None:
    # Frontier.admit remembered the URL as seen before refusing the request's meta, so the
    # page's own link to it was dropped as a duplicate: discovered, never recorded
    unstorable = YieldedRequest(harness.server.url("/p0"), {"meta": {1, 2}}, 0, None, None)
    outcome = harness.crawl(RequestSpider, {"/p0": PAGE}, registry={"/": [unstorable]})
    assert_survived(outcome, refused_requests=True)
    assert outcome.hits["/p0"] == 1


def test_a_retry_after_that_is_not_a_number_is_ignored(harness: Harness) -> None:
    # fetcher.parse_retry_after trusted str.isdigit(), true for "²", which float() refuses
    page = HostileResponse(
        b"HTTP/1.1 200 OK",
        ((b"Retry-After", "\u00b2".encode()), (b"Content-Length", b"2")),
        b"hi",
    )
    outcome = harness.crawl(ResponseSpider, {"/p0": page})
    assert_survived(outcome)
    assert rows(outcome.db, "SELECT state FROM requests WHERE url LIKE '%/p0'") == [("done",)]


def test_two_redirects_to_one_target_at_once_fetch_it_once(harness: Harness) -> None:
    # Both requests fetched the target and counted a 'redirect_target' skip; one row stored
    moved = HostileResponse(
        b"HTTP/1.1 301 Moved", ((b"Location", b"/elsewhere"), (b"Content-Length", b"0")), b""
    )
    elsewhere = raw_response(b"HTTP/1.1 200 OK", [(b"Content-Length", b"2")], b"hi")
    outcome = harness.crawl(
        ResponseSpider, {"/p0": moved, "/p1": moved}, unlinked={"/elsewhere": elsewhere}
    )
    assert_survived(outcome)
    assert outcome.hits["/elsewhere"] == 1


# --- Through the command line -------------------------------------------------------------

CLI_CASES: Final[dict[str, tuple[str, bytes]]] = {
    "charset=base64": (
        "ResponseSpider",
        raw_response(
            b"HTTP/1.1 200 OK",
            [(b"Content-Type", b"text/html; charset=base64"), (b"Content-Length", b"15")],
            b"<a href=x>x</a>",
        ),
    ),
    "unicode_escape decodes to lone surrogates": (
        "ResponseSpider",
        raw_response(
            b"HTTP/1.1 200 OK",
            [(b"Content-Type", b"text/html; charset=unicode_escape")],
            b"<title>\\ud800</title><a href='/\\udfff'>x</a>",
        ),
    ),
    "Retry-After in other digits": (
        "ResponseSpider",
        raw_response(
            b"HTTP/1.1 503 Busy",
            [(b"Retry-After", "\u00b2".encode()), (b"Content-Length", b"0")],
        ),
    ),
    "header value that is not UTF-8": (
        "ResponseSpider",
        raw_response(
            b"HTTP/1.1 200 OK",
            [(b"Content-Type", b"text/html; x=\xff\xfe"), (b"Content-Length", b"2")],
            b"hi",
        ),
    ),
    "hostile items": ("ItemSpider", raw_response(b"HTTP/1.1 200 OK", [], b"")),
}


@pytest.fixture
async def raw_server() -> AsyncIterator[RawHttpServer]:
    async with RawHttpServer() as server:
        yield server


@pytest.mark.parametrize("case", list(CLI_CASES))
async def test_hostile_cases_through_the_command_line(
    raw_server: RawHttpServer, run_cli: RunCli, tmp_path: Path, case: str
) -> None:
    spider, response = CLI_CASES[case]
    raw_server.route({"/p0": response})
    db = tmp_path / "cli.db"
    flags = []
    for key, value in FAST.items():
        flags += ["-s", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    result = await run_cli(
        "crawl",
        f"tests.test_hostile_properties:{spider}",
        *("--start-url", raw_server.url("/"), "-o", str(db), *flags),
    )
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert_all_accounted_for(db)
    assert rows(db, "SELECT status FROM crawls") == [("finished",)]
