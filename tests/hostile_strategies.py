"""Hypothesis strategies for hostile input: raw HTTP responses (status line, header bytes,
bodies and their framing), hostile HTML, charset labels, robots.txt and sitemap bodies, and
anything a spider callback may yield as an item or request.

Responses are served by `tests.raw_http.RawHttpServer` at `CASE_PATHS`; hrefs and Locations
may point at those paths, at a path nobody serves, at the same server by absolute URL (the
`PORT_TOKEN` is replaced by the server's port when the case is served; in a body encoded
as UTF-16 or UTF-32 it stays, one more broken href), at other hosts and at other schemes.
Every strategy is bounded so that one crawl of a case stays small.
"""

from __future__ import annotations

import codecs
import datetime
import decimal
import encodings
import encodings.aliases
import functools
import gc
import gzip
import itertools
import math
import pkgutil
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

import brotli
from hypothesis import strategies as st

from tests.raw_http import raw_response

__all__ = [
    "ALL_CODEC_NAMES",
    "CASE_PATHS",
    "NON_TEXT_CODECS",
    "PORT_TOKEN",
    "AnyRecord",
    "HostileResponse",
    "Nested",
    "TypedRecord",
    "YieldedRequest",
    "charset_labels",
    "content_types",
    "deep_nesting",
    "header_fields",
    "hostile_responses",
    "hostile_text",
    "hrefs",
    "html_bodies",
    "item_values",
    "items",
    "nested",
    "redirects",
    "robots_bodies",
    "sitemap_bodies",
    "status_lines",
    "yielded_requests",
]

CASE_PATHS: Final = ("/p0", "/p1", "/p2")
"""Where a case's responses are served (the index page `/` links to each)."""
PORT_TOKEN: Final = "@PORT@"
"""Stands for the test server's port in hrefs and Locations; replaced when served."""

Strategy: TypeAlias = st.SearchStrategy
T = TypeVar("T")


_PERCENT: Final = st.integers(min_value=0, max_value=99)


def _often(draw: st.DrawFn, percent: int = 85) -> bool:
    """True in `percent` of the examples; shrinks towards True (see `usually`)."""
    return draw(_PERCENT) < percent


@st.composite
def usually(draw: st.DrawFn, common: Strategy[T], rare: Strategy[T], percent: int = 85) -> T:
    """`common` in `percent` of the examples, else `rare`. A response broken in every part
    at once only tests the first check it fails; mostly-sound ones reach the code behind
    it. Shrinks towards `common`."""
    if _often(draw, percent):
        return draw(common)
    return draw(rare)


# --- Charset labels -----------------------------------------------------------------------

NON_TEXT_CODECS: Final = (
    *("base64", "base_64", "base64_codec", "BASE64", "bz2", "bz2_codec", "hex", "hex_codec"),
    *("quopri", "quoted-printable", "quotedprintable", "quopri_codec", "rot13", "rot_13"),
    *("ROT-13", "uu", "uu_codec", "zip", "zlib", "zlib_codec"),
)
"""Labels Python resolves to a codec that is not a text encoding (bytes-to-bytes or
str-to-str): `bytes.decode` refuses them."""
ODD_TEXT_CODECS: Final = (
    *("idna", "punycode", "undefined", "unicode_escape", "unicode-escape"),
    *("raw_unicode_escape", "utf-7", "UTF7", "utf_7", "mbcs", "oem", "ansi", "dbcs"),
    *("charmap", "palmos", "cp65001", "utf-32", "utf-16", "utf-16-be", "utf-32-le", "unicode"),
)
"""Text codecs that no page should be decoded with (they refuse errors="replace", or decode
escapes into lone surrogates), and names that exist only on Windows."""
REAL_CHARSETS: Final = (
    *("utf-8", "UTF-8", "utf8", "utf-8-sig", "latin1", "iso-8859-1", "ISO-8859-15"),
    *("windows-1252", "cp1251", "koi8-r", "shift_jis", "x-sjis", "euc-jp", "gb2312", "gbk"),
    *("gb18030", "big5", "euc-kr", "cp037", "cp500", "mac-roman", "ascii", "us-ascii"),
    *("tis-620", "iso-2022-jp", "hz", "utf-16le", "utf-16be"),
)
UNKNOWN_LABELS: Final = ("x-made-up", "utf-9", "", "-", ".", "utf-8.", "8", "none", "null")


def _all_codec_names() -> tuple[str, ...]:
    """Every name Python's codec registry knows: aliases and codec modules."""
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names |= {module.name for module in pkgutil.iter_modules(encodings.__path__)}
    return tuple(sorted(names))


ALL_CODEC_NAMES: Final = _all_codec_names()


@functools.cache
def charset_labels() -> Strategy[str]:
    """A charset label as a server might declare it: real, Python-only, unknown or garbled."""
    return st.one_of(
        st.sampled_from(REAL_CHARSETS),
        st.sampled_from(NON_TEXT_CODECS),
        st.sampled_from(ODD_TEXT_CODECS),
        st.sampled_from(ALL_CODEC_NAMES),
        st.sampled_from(UNKNOWN_LABELS),
        st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_.:"), max_size=20),
        st.text(max_size=12),
    )


# --- Header values ------------------------------------------------------------------------

MEDIA_TYPES: Final = (
    *("text/html", "TEXT/HTML", "text/html ", "application/xhtml+xml", "text/plain"),
    *("application/xml", "text/xml", "application/octet-stream", "image/png", "", "html"),
    *("text/html/extra", ";", "application/gzip"),
)


def _bytes_of(text: str) -> bytes:
    """Text as header or body bytes: UTF-8, lone surrogates kept as they came (a header that
    aiohttp decoded with surrogateescape is re-encoded the same way)."""
    return text.encode("utf-8", "surrogatepass")


_MEDIA: Final = usually(st.sampled_from(MEDIA_TYPES), st.text(max_size=15))
_LABELS: Final = st.lists(charset_labels(), max_size=2)
_QUOTES: Final = st.sampled_from(["", '"', "'"])
_SPACES: Final = st.sampled_from(["", " ", "\t"])
_PARAMETER_NAMES: Final = st.sampled_from(
    ["charset", "CHARSET", "Charset", "charset ", "x-charset"]
)
_EXTRA_PARAMETERS: Final = st.sampled_from(["", "; boundary=x", "; q=0.5", ";;", "; charset"])


@functools.cache
@st.composite
def content_types(draw: st.DrawFn) -> bytes:
    """A Content-Type value: a media type with zero or more (hostile) charset parameters."""
    media = draw(_MEDIA)
    params = []
    for label in draw(_LABELS):
        quote = draw(_QUOTES)
        space = draw(_SPACES)
        name = draw(_PARAMETER_NAMES)
        params.append(f"{space}{name}={quote}{label}{quote}")
    extra = draw(_EXTRA_PARAMETERS)
    return _bytes_of(";".join([media, *params]) + extra)


LOCATION_TARGETS: Final = (
    *CASE_PATHS,
    *("/missing", "p1", "../p2", "./p0?x=1", "?q=1", "#frag", "", " ", "/p0#top", "//"),
    *("/p0/../p1", "/%7Ep1", "/%zz", "/%", "/\u00fc", "\\p1", "/p1 with space", "/p0\t"),
    f"http://127.0.0.1:{PORT_TOKEN}/p1",
    f"HTTP://127.0.0.1:{PORT_TOKEN}/p2",
    f"http://127.0.0.2:{PORT_TOKEN}/p1",
    f"http://127.0.0.3:{PORT_TOKEN}/",
    f"//127.0.0.1:{PORT_TOKEN}/p0",
    f"http://user:pass@127.0.0.1:{PORT_TOKEN}/p0",
    *("http://127.0.0.1:99999/", "http://127.0.0.1:0/", "http://[::1]:1/", "http://[::1"),
    *("http://", "https://", "http:///p0", "http://a b/", "http://xn--/", "http://bücher.de/"),
    *("ftp://127.0.0.1/p0", "javascript:alert(1)", "data:text/html,<a href=x>", "mailto:a@b"),
    *("file:///etc/passwd", "tel:+1", "about:blank", "ws://127.0.0.1/", "x:"),
)


@functools.cache
def location_values() -> Strategy[bytes]:
    """A Location value: relative, absolute, other hosts on 127.0.0.x, other schemes, junk."""
    return st.one_of(
        st.sampled_from(LOCATION_TARGETS).map(_bytes_of),
        st.text(max_size=30).map(_bytes_of),
        st.binary(max_size=20),
        st.just(b"/" + b"a" * 3000),
    )


@functools.cache
def retry_after_values() -> Strategy[bytes]:
    """A Retry-After value: seconds, dates, and what is neither."""
    return st.one_of(
        st.integers(min_value=0, max_value=3).map(lambda n: str(n).encode()),
        st.sampled_from(
            [
                *("0", "1", "-1", "1.5", "1e3", "99999999999999999999", "9" * 400, "", " 1 "),
                *("Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"),
                *("Thu, 01 Jan 1970 00:00:00 GMT", "Mon, 99 Foo 2024 25:61:61 GMT"),
                *("\u00b2", "\u0661\u0662", "\uff11", "NaN", "inf", "soon", "0x10"),
            ]
        ).map(_bytes_of),
        st.text(max_size=15).map(_bytes_of),
    )


@functools.cache
def set_cookie_values() -> Strategy[bytes]:
    """A Set-Cookie value: realistic cookies with hostile attributes, and junk."""
    attribute = st.sampled_from(
        [
            *("Path=/", "Path=", "Domain=127.0.0.1", "Domain=.example", "Domain=", "Secure"),
            *("HttpOnly", "SameSite=None", "SameSite=bogus", "Max-Age=-1", "Max-Age=1e99"),
            *("Max-Age=99999999999999999999", "Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
            *("Expires=Fri, 31 Dec 99999 23:59:59 GMT", "Expires=garbage", "=", ";;"),
        ]
    )
    name = st.text(max_size=8)
    value = st.one_of(st.text(max_size=12), st.just("x" * 5000))
    cookie = st.builds(
        lambda n, v, attrs: "; ".join([f"{n}={v}", *attrs]),
        name,
        value,
        st.lists(attribute, max_size=3),
    )
    return st.one_of(cookie.map(_bytes_of), st.binary(max_size=30))


_WRONG_LENGTHS: Final = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.sampled_from(
        [
            *(b"-1", b"0", b"18446744073709551616", b"9" * 40, b"1e3", b"abc", b""),
            *(b" 12", b"12 ", b"+5", b"0x10", b"5, 5", b"5,6", b"\xff"),
        ]
    ),
)


def _content_length(draw: st.DrawFn, actual: int) -> bytes:
    """A Content-Length value for a body of `actual` bytes: usually right, else a little
    off, negative, huge or not a number."""
    if _often(draw):
        return str(actual).encode()
    wrong = draw(_WRONG_LENGTHS)
    return wrong if isinstance(wrong, bytes) else str(max(0, actual + wrong)).encode()


TRANSFER_CODINGS: Final = (
    *(b"chunked", b"CHUNKED", b"gzip, chunked", b"chunked, gzip", b"identity", b"gzip"),
    *(b"chunked, chunked", b"", b"x-unknown", b"chunked;q=1", b" chunked"),
)
SUPPORTED_CODINGS: Final = ("gzip", "x-gzip", "deflate", "br", "identity", "GZIP", " gzip ")
CONTENT_CODINGS: Final = (
    *("gzip", "x-gzip", "deflate", "br", "identity", "", "GZIP", " gzip ", "gzip, br"),
    *("compress", "zstd", "deflate, gzip", "bogus", "gzip;q=1"),
)
HEADER_NAMES: Final = (
    *(b"Content-Type", b"content-type", b"Content-Encoding", b"Content-Length"),
    *(b"Transfer-Encoding", b"Location", b"Retry-After", b"Set-Cookie", b"Refresh"),
    *(b"Content-Disposition", b"Link", b"X-Robots-Tag", b"Connection", b"Keep-Alive"),
    *(b"Vary", b"Date", b"Last-Modified", b"ETag", b"Content-Range", b"Trailer", b"Upgrade"),
    *(b"Server", b"Content-Language", b"Expires", b"Cache-Control", b"Alt-Svc"),
)


@functools.cache
def header_names() -> Strategy[bytes]:
    """A header name: a known one, a token, or bytes no token allows (spaces, colons, 8-bit)."""
    token = st.text(st.sampled_from("abcXYZ-_0129!#$%&'*+.^`|~"), min_size=1, max_size=12)
    return usually(
        st.one_of(st.sampled_from(HEADER_NAMES), token.map(str.encode)),
        st.one_of(
            st.binary(max_size=12),
            st.sampled_from([b"", b" Content-Type", b"Content-Type ", b"X\x00", b"\xff", b":"]),
        ),
    )


@functools.cache
def header_value_for(name: bytes) -> Strategy[bytes]:
    """A value suited to the header `name` (and junk, for any name)."""
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=30)
    junk = usually(
        printable.map(_bytes_of),
        st.one_of(
            st.binary(max_size=30),
            st.text(max_size=30).map(_bytes_of),
            st.sampled_from([b"", b" ", b"\x00", b"a\rb", b"a\nb", b"\r\n folded", b"x" * 9000]),
        ),
        percent=70,
    )
    specific: dict[bytes, Strategy[bytes]] = {
        b"content-type": content_types(),
        b"content-encoding": st.sampled_from(CONTENT_CODINGS).map(str.encode),
        b"content-length": _WRONG_LENGTHS.map(
            lambda v: v if isinstance(v, bytes) else str(10 + v).encode()
        ),
        b"transfer-encoding": st.sampled_from(TRANSFER_CODINGS),
        b"location": location_values(),
        b"retry-after": retry_after_values(),
        b"set-cookie": set_cookie_values(),
        b"refresh": st.sampled_from([b"0; url=/p1", b"5", b"x; url=javascript:x"]),
        b"link": st.sampled_from([b"</p1>; rel=next", b"<>; rel=", b"<http://[::1>;"]),
    }
    key = name.lower()
    return usually(specific[key], junk) if key in specific else junk


@functools.cache
@st.composite
def header_fields(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """One header line's name and value."""
    name = draw(header_names())
    return name, draw(header_value_for(name))


# --- Status lines -------------------------------------------------------------------------

STATUS_CODES: Final = (
    *(200, 200, 200, 201, 203, 204, 206, 299, 300, 301, 302, 303, 304, 305, 307, 308, 399),
    *(400, 401, 403, 404, 410, 429, 451, 499, 500, 502, 503, 504, 599, 600, 999),
)


@functools.cache
def status_lines() -> Strategy[bytes]:
    """A status line: a usual one, an unusual code or reason, another version, or junk."""
    version = st.sampled_from(
        [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/0.9", b"http/1.1", b"HTTP/1.12"]
    )
    code = st.one_of(
        st.sampled_from(STATUS_CODES).map(lambda c: str(c).encode()),
        st.integers(min_value=0, max_value=1200).map(lambda c: str(c).encode()),
        st.sampled_from([b"-1", b"2OO", b"", b"20", b"2000", b"+200", b"\xd9\xa2\xd9\xa0\xd9\xa0"]),
    )
    reason = st.one_of(
        st.sampled_from([b"OK", b"", b"Not Found", b"\xff\xfe", b"\x00", b"OK OK"]),
        st.binary(max_size=20),
    )
    odd = st.builds(lambda v, c, r: v + b" " + c + b" " + r, version, code, reason)
    usual = usually(st.just(200), st.sampled_from(STATUS_CODES), percent=50).map(
        lambda c: b"HTTP/1.1 %d Reason" % c
    )
    return usually(usual, st.one_of(odd, st.binary(max_size=30)), percent=90)


# --- Bodies -------------------------------------------------------------------------------

HREF_SAMPLES: Final = (
    *LOCATION_TARGETS,
    *("   ", "#", "javascript:void(0)", "%", "%00", "%ff", "/p1?%zz", "/p2?a=1&a=2"),
    *("http://127.0.0.1:/", "http://:80/", "http://-/", "http://a..b/", "http://1.2.3.4.5/"),
    *("http://[::ffff:127.0.0.1]/", "https://[v1.x]/", "http://127.0.0.1:65536/", "//\\\\x"),
    *("/\x00", "/p0\x00/p1", "\x0b/p1", "/p0%2F..%2Fp1", "/p0/" + "a/" * 50, "/?" + "q" * 600),
    *("http://127.0.0.1:\uff18\uff10/", "http://\uff41.example/", "http://xn--zz/", "\u202e/p0"),
    *("&#0;", "&#xD800;", "&#x110000;", "&amp;", "&", "/p1&#x20;", "&#9;/p2"),
    *("//127.0.0.1:@x@/p0", "//@/p0", "//:@/", "//a@b@c/", "http://@/", "http://a:b@/p0"),
)


@functools.cache
def hrefs() -> Strategy[str]:
    """An href as pages write them: usual, odd, broken and outright hostile."""
    return st.one_of(
        st.sampled_from(HREF_SAMPLES),
        st.text(max_size=25),
        st.text(st.sampled_from("/.?#%:@[]\\ abp0129"), max_size=20),
    )


def _attribute(value: str, draw: st.DrawFn) -> str:
    quote = draw(_QUOTES)
    return f"{quote}{value}{quote}"


_META_FORMS: Final = st.integers(min_value=0, max_value=2)
_HREF_LISTS: Final = st.lists(hrefs(), max_size=6)
_LINK_TEXT: Final = st.text(max_size=5)
_FRAGMENT_LISTS: Final = st.lists(
    st.sampled_from(
        [
            *("<title>T</title>", "<p>text", "</a>", "<!--", "<![CDATA[", "<a>", "<script>"),
            *("<a href>", "<a href=>", "<base>", "<svg><a href='/p1'>", "<template><a href='/p2'>"),
            *("<noscript>", "\x00", "<a href='/p0'"),
        ]
    ),
    max_size=4,
)


@functools.cache
@st.composite
def html_documents(draw: st.DrawFn) -> str:
    """An HTML document (as text) with hostile `<a href>`, `<base>` and `<meta charset>`."""
    parts: list[str] = []
    if draw(st.booleans()):
        label = draw(charset_labels())
        form = draw(_META_FORMS)
        if form == 0:
            parts.append(f"<meta charset={_attribute(label, draw)}>")
        elif form == 1:
            parts.append(f'<meta http-equiv="Content-Type" content="text/html; charset={label}">')
        else:
            parts.append(f"<META CHARSET = {label}>")
    if draw(st.booleans()):
        parts.append(f"<base href={_attribute(draw(hrefs()), draw)}>")
    for href in draw(_HREF_LISTS):
        parts.append(f"<a href={_attribute(href, draw)}>{draw(_LINK_TEXT)}</a>")
    parts.extend(draw(_FRAGMENT_LISTS))
    order = draw(st.permutations(parts))
    return "<!doctype html><html><head>" + "".join(order) + "</html>"


BODY_ENCODINGS: Final = (
    *("utf-8", "utf-8", "cp1252", "latin-1", "utf-16", "utf-16-le", "utf-32", "shift_jis"),
    *("cp037", "utf-7", "unicode_escape"),
)


_BODY_ENCODINGS: Final = st.sampled_from(BODY_ENCODINGS)
_BOMS: Final = st.sampled_from(
    [b"", b"", b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"\xff"]
)
_JUNK: Final = st.binary(min_size=1, max_size=16)
_NOT_HTML: Final = st.binary(max_size=200)


@functools.cache
@st.composite
def html_bodies(draw: st.DrawFn) -> bytes:
    """The bytes of an HTML body: a hostile document in some encoding, perhaps with a BOM,
    NULs or junk mixed in; or bytes that are not HTML at all."""
    document = draw(html_documents())
    encoding = draw(_BODY_ENCODINGS)
    body = draw(_BOMS) + document.encode(encoding, "replace")
    if draw(st.booleans()):
        junk = draw(_JUNK)
        at = draw(st.integers(min_value=0, max_value=len(body)))
        body = body[:at] + junk + body[at:]
    return body if _often(draw) else draw(_NOT_HTML)


# --- Compression and framing --------------------------------------------------------------


def _compress(coding: str, body: bytes, level: int) -> bytes:
    """`body` compressed as `coding` says (deflate as zlib-wrapped or raw, by level parity)."""
    key = coding.strip().lower()
    if key in ("gzip", "x-gzip"):
        return gzip.compress(body, mtime=0)
    if key == "deflate":
        if level % 2:
            return zlib.compress(body)
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return compressor.compress(body) + compressor.flush()
    if key == "br":
        result: bytes = brotli.compress(body)
        return result
    return body


@dataclass(frozen=True)
class HostileResponse:
    """One response, as the raw server will write it."""

    status_line: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunks: tuple[bytes, ...] | None = None
    """Chunked framing of `body` when given (the pieces of `body`, in order)."""

    def raw(self, port: int) -> bytes:
        """The response's bytes, with `PORT_TOKEN` replaced by `port`."""
        data = raw_response(self.status_line, self.headers, self.body, chunks=self.chunks)
        return data.replace(PORT_TOKEN.encode(), str(port).encode())


@st.composite
def _split(draw: st.DrawFn, body: bytes) -> tuple[bytes, ...]:
    cuts = sorted(
        draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=3, unique=True))
    )
    bounds = [0, *cuts, len(body)]
    return tuple(body[a:b] for a, b in itertools.pairwise(bounds))


_CODINGS: Final = usually(st.sampled_from(SUPPORTED_CODINGS), st.sampled_from(CONTENT_CODINGS))
_LEVELS: Final = st.integers(min_value=0, max_value=9)
_MISMATCHES: Final = st.sampled_from(["plain", "truncated", "other"])
_OTHER_CODINGS: Final = st.sampled_from(["gzip", "deflate", "br"])
_FRAMINGS: Final = st.sampled_from(["length", "length", "close", "chunked", "bare-chunks"])
_TRANSFER_CODINGS: Final = st.sampled_from(TRANSFER_CODINGS)
_HEADER_LISTS: Final = st.lists(header_fields(), max_size=3)
_INTERESTING_LISTS: Final = st.lists(
    st.sampled_from(
        [b"Retry-After", b"Location", b"Set-Cookie", b"Content-Type", b"Refresh", b"Link"]
    ),
    max_size=2,
    unique=True,
)
"""Headers the crawler reads, added more often than any header at all would be."""


@st.composite
def hostile_responses(
    draw: st.DrawFn, *, status: Strategy[bytes] | None = None, body: Strategy[bytes] | None = None
) -> HostileResponse:
    """A whole response: status line, headers (Content-Type, Content-Encoding over a matching
    or mismatched body, Content-Length right or wrong, Transfer-Encoding, any others) and a
    body framed by length, by chunks, or by the connection's close."""
    status_line = draw(status if status is not None else status_lines())
    payload = draw(body if body is not None else html_bodies())
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(min_value=0, max_value=3)):
        headers.append((b"Content-Type", draw(content_types())))
    if draw(st.booleans()):
        coding = draw(_CODINGS)
        level = draw(_LEVELS)
        mode = "match" if _often(draw) else draw(_MISMATCHES)
        if mode == "match":
            payload = _compress(coding, payload, level)
        elif mode == "truncated":
            compressed = _compress(coding, payload, level)
            payload = compressed[: draw(st.integers(min_value=0, max_value=len(compressed)))]
        elif mode == "other":
            other = draw(_OTHER_CODINGS)
            payload = _compress(other, payload, level)
        headers.append((b"Content-Encoding", coding.encode()))
    framing = draw(_FRAMINGS)
    chunks: tuple[bytes, ...] | None = None
    if framing == "length":
        headers.append((b"Content-Length", _content_length(draw, len(payload))))
    elif framing in ("chunked", "bare-chunks"):
        chunks = draw(_split(payload))
        if framing == "chunked":
            headers.append((b"Transfer-Encoding", draw(_TRANSFER_CODINGS)))
    for name in draw(_INTERESTING_LISTS):
        headers.append((name, draw(header_value_for(name))))
    headers.extend(draw(_HEADER_LISTS))
    if draw(st.booleans()):
        headers = list(draw(st.permutations(headers)))
    return HostileResponse(status_line, tuple(headers), payload, chunks)


@functools.cache
@st.composite
def redirects(draw: st.DrawFn) -> HostileResponse:
    """A redirect status with a hostile Location (and perhaps a body and other headers)."""
    code = draw(st.sampled_from([b"301", b"302", b"303", b"307", b"308", b"300", b"304"]))
    headers = [
        (b"Location", draw(location_values())) for _ in range(draw(st.sampled_from([1, 1, 2])))
    ]
    headers.extend(draw(st.lists(header_fields(), max_size=2)))
    body = draw(st.sampled_from([b"", b"<a href='/p1'>moved</a>"]))
    headers.append((b"Content-Length", str(len(body)).encode()))
    return HostileResponse(b"HTTP/1.1 " + code + b" Moved", tuple(headers), body)


# --- robots.txt and sitemaps --------------------------------------------------------------

ROBOTS_LINES: Final = (
    *("User-agent: *", "User-agent: crawler", "User-agent:", "Disallow: /", "Disallow: /p1"),
    *("Disallow:", "Allow: /p0", "Allow: /*$", "Disallow: /*?", "Disallow: /%zz", "Allow"),
    *("Crawl-delay: 0.01", "Crawl-delay: 1e308", "Crawl-delay: nan", "Crawl-delay: -1"),
    *("Crawl-delay: inf", "Crawl-delay: -inf", "Crawl-delay: 1e-400", "Crawl-delay: x"),
    *("Crawl-delay: 99999999999999999999", "Request-rate: 1/0", "Request-rate: x/y"),
    *(
        "Sitemap: /p1",
        "Sitemap: http://[::1",
        "Sitemap:",
        "# comment",
        "\x00",
        "\ufeffUser-agent: *",
    ),
)


@functools.cache
@st.composite
def robots_bodies(draw: st.DrawFn) -> bytes:
    """A robots.txt: usual and hostile lines (NaN, infinite and negative Crawl-delay…)."""
    lines = draw(
        st.lists(st.one_of(st.sampled_from(ROBOTS_LINES), st.text(max_size=20)), max_size=8)
    )
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    return draw(st.one_of(st.just(_bytes_of(text)), st.binary(max_size=60)))


SITEMAP_LOCS: Final = (
    *(f"http://127.0.0.1:{PORT_TOKEN}/p0", f"http://127.0.0.1:{PORT_TOKEN}/p1", "/p2", ""),
    *("http://[::1", "javascript:x", "http://127.0.0.2/", "&#xD800;", "&amp;", "\u00fc", "%"),
)
LASTMODS: Final = (
    *("2024-05-01", "2024-05", "2024", "2024-05-01T10:00:00+02:00", "2024-13-45", "99999"),
    *("", "0000-00-00", "2024-05-01T25:00:00", "-1", "nan", "2024-05-01T10:00:00+99:00"),
)


@functools.cache
@st.composite
def sitemap_bodies(draw: st.DrawFn) -> bytes:
    """A sitemap: a urlset or index with hostile locs and lastmods, a text sitemap, a DTD,
    broken XML, junk; gzipped or not (whole or cut short)."""
    kind = draw(st.sampled_from(["urlset", "sitemapindex", "other"]))
    entries = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        loc = draw(st.one_of(st.sampled_from(SITEMAP_LOCS), st.text(max_size=15)))
        lastmod = draw(st.one_of(st.sampled_from(LASTMODS), st.text(max_size=10)))
        tag = "sitemap" if kind == "sitemapindex" else "url"
        entries.append(f"<{tag}><loc>{loc}</loc><lastmod>{lastmod}</lastmod></{tag}>")
    prolog = draw(
        st.sampled_from(
            [
                '<?xml version="1.0" encoding="UTF-8"?>',
                "",
                '<?xml version="1.0" encoding="base64"?>',
                '<?xml version="1.0" encoding="x-made-up"?>',
                '<!DOCTYPE x [<!ENTITY a "aaaa">]>',
                "\ufeff",
            ]
        )
    )
    xml = f'{prolog}<{kind} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
    xml += "".join(entries) + draw(st.sampled_from([f"</{kind}>", "", f"</{kind}><x>"]))
    lines = "\n".join(draw(st.lists(st.sampled_from(SITEMAP_LOCS), max_size=4)))
    body = draw(
        st.one_of(
            st.just(_bytes_of(xml)),
            st.just(_bytes_of(lines)),
            st.binary(max_size=60),
        )
    )
    if draw(st.booleans()):
        body = gzip.compress(body, mtime=0)
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    return body


# --- What a callback may yield ------------------------------------------------------------

SURROGATES: Final = ("\ud800", "\udfff", "\udc80", "\ud83d")


@functools.cache
def hostile_text(max_size: int = 12) -> Strategy[str]:
    """Text that may hold lone surrogates, NULs and any other code point."""
    return st.one_of(
        st.text(st.characters(exclude_categories=()), max_size=max_size),
        st.sampled_from([*SURROGATES, "\x00", "a\x00b", "\ufffd", "\U0010ffff", "é\ud800"]),
    )


_HUGE_INTS: Final = (2**63, -(2**63) - 1, 2**64, 10**30, -(10**40), 10**4000)


@functools.cache
def _scalars() -> Strategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(_HUGE_INTS),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324]),
        hostile_text(),
        st.binary(max_size=6),
        st.just(decimal.Decimal("NaN")),
        st.just(decimal.Decimal("1.5")),
        st.just(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)),
        st.just(complex(1, 2)),
        st.just(object()),
        st.just(Ellipsis),
    )


@functools.cache
def _keys() -> Strategy[object]:
    return st.one_of(
        hostile_text(6),
        st.integers(),
        st.sampled_from([None, True, 1.5, math.nan, b"k", (1, 2), frozenset({1})]),
    )


def _containers(children: Strategy[object]) -> Strategy[object]:
    hashable = st.one_of(st.integers(), hostile_text(4), st.none())
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(hostile_text(6), children, max_size=4),
        st.dictionaries(_keys(), children, max_size=3),
        st.tuples(children, children),
        st.sets(hashable, max_size=3),
        st.frozensets(hashable, max_size=3),
    )


@functools.cache
def item_values() -> Strategy[object]:
    """A value an item field may hold: JSON's and not (NaN, huge ints, bytes, sets…)."""
    return st.recursive(_scalars(), _containers, max_leaves=12)


class Nested(list[object]):
    """A list holding a value `depth` lists (or dicts) deep, which prints as
    `nested(depth, kind)`: Hypothesis and pytest print failing examples with recursive
    printers that a value this deep would overflow."""

    def __init__(self, depth: int, kind: str = "list") -> None:
        value: object = "bottom"
        # Without the cyclic garbage collector: every 700 new containers it would walk the
        # ones built so far, which made building these values a third of a crawl test's time
        # (and more on a loaded machine). A chain of new lists or dicts holds no cycle.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for _ in range(depth - 1):
                value = [value] if kind == "list" else {"k": value}
        finally:
            if collecting:
                gc.enable()
        super().__init__([value])
        self.depth, self.kind = depth, kind

    def __repr__(self) -> str:
        return f"nested({self.depth}, {self.kind!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def nested(depth: int, kind: str = "list") -> Nested:
    """A value `depth` lists (or dicts, inside the outer list) deep."""
    return Nested(depth, kind)


@functools.cache
def deep_nesting() -> Strategy[object]:
    """A value nested far deeper than any encoder's recursion limit allows."""
    return st.builds(
        # 5000 and more: past the recursion limit even while Hypothesis raises it
        nested,
        st.integers(min_value=5_000, max_value=20_000),
        st.sampled_from(["list", "dict"]),
    )


@dataclass
class AnyRecord:
    """A dataclass item whose field may hold anything."""

    value: Any
    k: Any = None


@dataclass
class TypedRecord:
    """A dataclass item with declared types, built from values of any type."""

    title: str
    price: float
    count: int
    tags: list[str]
    extra: dict[str, Any] | None = None


def _mappings(values: Strategy[object]) -> Strategy[Mapping[Any, Any]]:
    def wrap(data: dict[Any, Any], kind: str) -> Mapping[Any, Any]:
        if kind == "proxy":
            return MappingProxyType(data)
        if kind == "ordered":
            return OrderedDict(data)
        return data

    plain = st.dictionaries(hostile_text(6), values, max_size=4)
    odd_keys = st.dictionaries(_keys(), values, max_size=3)
    return st.builds(
        wrap, st.one_of(plain, odd_keys), st.sampled_from(["dict", "proxy", "ordered"])
    )


@functools.cache
def items() -> Strategy[object]:
    """Anything a callback may yield as an item: dicts (with any keys and values, an item
    key `k` for de-duplication now and then) and dataclasses holding any values, values
    nested past the recursion limit among them."""
    values = st.one_of(item_values(), deep_nesting())

    def keyed(mapping: Mapping[Any, Any], key: object) -> object:
        return {**mapping, "k": key}

    return st.one_of(
        _mappings(values),
        st.builds(keyed, _mappings(values), values),
        st.builds(AnyRecord, values, values),
        st.builds(TypedRecord, values, values, values, values, values),
    )


@dataclass(frozen=True)
class YieldedRequest:
    """What a callback's Request will be built from (built in the callback, where a
    Request constructor that raises is the spider's own error)."""

    url: str
    meta: object
    priority: object
    headers: object
    callback: str | None


@functools.cache
def yielded_requests() -> Strategy[YieldedRequest]:
    """A request a callback may yield: hostile URL, meta, priority and headers."""
    return st.builds(
        YieldedRequest,
        st.one_of(
            st.sampled_from(HREF_SAMPLES).map(lambda h: f"http://127.0.0.1:{PORT_TOKEN}/{h}"),
            hostile_text(30),
            st.sampled_from(CASE_PATHS).map(lambda p: f"http://127.0.0.1:{PORT_TOKEN}{p}"),
        ),
        st.one_of(st.none(), st.dictionaries(hostile_text(6), item_values(), max_size=3)),
        st.one_of(st.integers(min_value=-5, max_value=5), st.sampled_from(_HUGE_INTS)),
        st.one_of(st.none(), st.dictionaries(hostile_text(6), hostile_text(10), max_size=2)),
        st.sampled_from([None, "parse", "leaf"]),
    )
