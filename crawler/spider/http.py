"""Request and Response, the values spiders see: decoding, selectors, links and follow().

Nothing here does I/O. `Response.text` decodes the body with the charset from the BOM, the
Content-Type header or a `<meta>` tag, in that order (as browsers do), and always succeeds.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias, final

from multidict import CIMultiDict, CIMultiDictProxy
from selectolax.lexbor import LexborHTMLParser, LexborNode

from crawler.errors import SpiderError
from crawler.links import canonical_url, extract_links

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["Callback", "Item", "Request", "RequestBatch", "Response", "decode_body"]

Item: TypeAlias = "Mapping[str, Any] | DataclassInstance"
"""What a callback yields as data: a dict (or any mapping) or a dataclass instance."""

Callback: TypeAlias = "Callable[[Response], AsyncIterator[Any]]"
"""A spider method that parses a response and yields items and requests."""


@final
class Request:
    """One URL to fetch, and the name of the spider method that will parse it.

    `callback` may be given as a bound method (so type checkers and "go to definition" work)
    or as its name; it is stored as the name, because requests are persisted in the frontier
    and looked up on the running spider when their response arrives. `None` means `parse`.

    `meta` is user data, JSON-serialisable, persisted with the request and handed back as
    `response.meta`. The engine never reads it.
    """

    __slots__ = ("callback", "depth", "headers", "lastmod", "meta", "method", "priority", "url")

    def __init__(
        self,
        url: str,
        *,
        callback: Callback | str | None = None,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        meta: dict[str, Any] | None = None,
        priority: int = 0,
        depth: int = 0,
        lastmod: datetime | str | None = None,
    ) -> None:
        self.url = url
        self.callback: str = "parse" if callback is None else _callback_name(callback)
        self.method = method if method == "GET" else method.upper()
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.meta: dict[str, Any] = meta if meta is not None else {}
        self.priority = priority
        self.depth = depth
        self.lastmod: str | None = utc_text(lastmod) if isinstance(lastmod, datetime) else lastmod
        """When the page last changed, as a sitemap's `<lastmod>` says (UTC text, as the
        database's times): a re-crawl fetches a page again when this is later than its last
        fetch, and not by age (`refresh_after`)."""

    def replace(self, **changes: Any) -> Request:
        """Return a copy of this request with some attributes changed."""
        values: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        url = values.pop("url")
        return Request(url, **values)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url} callback={self.callback} depth={self.depth}>"


def utc_text(moment: datetime) -> str:
    """`moment` as the database's time text (`2026-12-05T06:55:51.397+00:00`); a naive
    datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@final
class RequestBatch:
    """Requests for many URLs that share a callback, `meta`, priority, headers and depth:
    what `Response.follow_all()` returns.

    Yield it from a callback as one output. The crawler admits its URLs in one pass and
    refuses those it has just seen before any `Request` is built for them (on most sites,
    most of a page's links), which makes it much cheaper than yielding one `Request` per link.
    Iterating over it gives the `Request`s one by one.
    """

    __slots__ = ("callback", "depth", "headers", "meta", "priority", "urls")

    def __init__(
        self,
        urls: Sequence[str],
        *,
        callback: Callback | str | None = None,
        meta: dict[str, Any] | None = None,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
        depth: int = 0,
    ) -> None:
        self.urls = urls
        """The absolute URLs to request, in order."""
        self.callback: str = "parse" if callback is None else _callback_name(callback)
        self.meta: dict[str, Any] = meta if meta is not None else {}
        self.priority = priority
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.depth = depth

    def request_for(self, url: str) -> Request:
        """Return the batch's request for one URL (each gets its own copy of `meta`)."""
        return Request(
            url,
            callback=self.callback,
            meta=dict(self.meta) if self.meta else None,
            priority=self.priority,
            headers=self.headers,
            depth=self.depth,
        )

    def __iter__(self) -> Iterator[Request]:
        return (self.request_for(url) for url in self.urls)

    def __len__(self) -> int:
        return len(self.urls)

    def __repr__(self) -> str:
        return f"<RequestBatch of {len(self.urls)} callback={self.callback} depth={self.depth}>"


def _callback_name(callback: Callback | str | None) -> str:
    if callback is None:
        return "parse"
    if isinstance(callback, str):
        return callback
    name = getattr(callback, "__name__", None)
    if not isinstance(name, str) or getattr(callback, "__self__", None) is None:
        raise SpiderError(f"callback must be a spider method or its name, got {callback!r}")
    return name


@final
class Response:
    """A fetched page: final URL, status, headers and body, with parsing helpers.

    The decoded `text` and the parsed tree are built lazily, once, on first use.
    """

    __slots__ = ("__dict__", "body", "headers", "request", "status", "url")

    def __init__(
        self,
        *,
        url: str,
        status: int,
        headers: CIMultiDictProxy[str] | CIMultiDict[str] | Mapping[str, str],
        body: bytes,
        request: Request,
    ) -> None:
        self.url = url
        """The final URL, after redirects."""
        self.status = status
        self.headers: CIMultiDictProxy[str] = (
            headers
            if isinstance(headers, CIMultiDictProxy)
            else CIMultiDictProxy(CIMultiDict(headers))
        )
        self.body = body
        self.request = request

    @property
    def meta(self) -> dict[str, Any]:
        """The `meta` of the request that produced this response."""
        return self.request.meta

    @property
    def depth(self) -> int:
        """Link depth of this page: 0 for start URLs, parent depth + 1 for followed links."""
        return self.request.depth

    @property
    def content_type(self) -> str:
        """The media type from Content-Type, lowercase, without parameters."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    @functools.cached_property
    def encoding(self) -> str:
        """The charset used to decode `text` (BOM, then header, then `<meta>`, then UTF-8)."""
        return detect_encoding(self.body, self.headers.get("Content-Type", ""))

    @functools.cached_property
    def text(self) -> str:
        """The body decoded with `encoding`; undecodable bytes become U+FFFD."""
        return decode_body(self.body, self.encoding)

    @functools.cached_property
    def tree(self) -> LexborHTMLParser:
        """The parsed HTML document (selectolax's Lexbor parser).

        A UTF-8 body goes to Lexbor as it is, without a decode and re-encode; any other
        body is decoded to `text` first.
        """
        if self.encoding == "utf-8" and b"\x00" not in self.body:
            return LexborHTMLParser(self.body)
        return LexborHTMLParser(self.text)

    def css(self, selector: str) -> list[LexborNode]:
        """Return every node matching a CSS selector."""
        return self.tree.css(selector)

    def css_first(self, selector: str) -> LexborNode | None:
        """Return the first node matching a CSS selector, or None."""
        return self.tree.css_first(selector)

    def links(self) -> list[str]:
        """Return the page's links: absolute, fragment-free, de-duplicated, in page order."""
        return list(self._links)

    @functools.cached_property
    def _links(self) -> tuple[str, ...]:
        return tuple(extract_links(self.tree, self.url))

    @functools.cached_property
    def _link_set(self) -> frozenset[str]:
        return frozenset(self._links)

    def urljoin(self, url: str) -> str:
        """Resolve a (possibly relative) URL against this page's URL."""
        return canonical_url(url, self.url)

    def follow(
        self,
        target: str | LexborNode,
        *,
        callback: Callback | str | None = None,
        meta: dict[str, Any] | None = None,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
        lastmod: datetime | None = None,
    ) -> Request:
        """Return a Request for a link on this page, one level deeper.

        Args:
            target: an href (relative or absolute) or an `<a>` node, whose href is read.
            callback: the spider method to parse the target; defaults to `parse`.
            meta: user data handed to the target's response.
            lastmod: when the target last changed (a sitemap's `<lastmod>`; see `Request`).
        """
        return Request(
            self._url_of(target),
            callback=callback,
            meta=meta,
            priority=priority,
            headers=headers,
            depth=self.request.depth + 1,
            lastmod=lastmod,
        )

    def follow_all(
        self,
        targets: Iterable[str | LexborNode] | None = None,
        *,
        callback: Callback | str | None = None,
        meta: dict[str, Any] | None = None,
        priority: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> RequestBatch:
        """Return requests for many links on this page, one level deeper, to yield at once.

        `yield response.follow_all()` follows every link of the page (`links()`); given
        hrefs or `<a>` nodes, it follows those, as `follow()` would one by one. Duplicates
        that the crawler has just seen cost almost nothing (see `RequestBatch`).

        Example:
            ```python
            yield response.follow_all(response.css("ul.pager a"), callback=self.parse_list)
            ```
        """
        urls = self._links if targets is None else [self._url_of(t) for t in targets]
        return RequestBatch(
            urls,
            callback=callback,
            meta=meta,
            priority=priority,
            headers=headers,
            depth=self.request.depth + 1,
        )

    def _url_of(self, target: str | LexborNode) -> str:
        """The absolute URL of an href or `<a>` node; an invalid one is kept as written (the
        frontier records it as an invalid URL)."""
        href = (target.attributes.get("href") or "") if isinstance(target, LexborNode) else target
        if "_links" in self.__dict__ and href in self._link_set:
            return href  # one of links(): already canonical
        try:
            return canonical_url(href, self.url)
        except (ValueError, TypeError, UnicodeError):
            return href.strip()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.url}>"


# WHATWG maps these labels to windows-1252, a superset that decodes what servers really send.
_WHATWG_ALIASES: Final = {
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "us-ascii": "cp1252",
    "windows-1252": "cp1252",
    "x-sjis": "shift_jis",
    "unicode": "utf-16-le",
}
_CHARSET_IN_HEADER: Final = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
_CHARSET_IN_META: Final = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


# Text codecs Python has that no page is written in: they refuse errors="replace" (idna,
# punycode, undefined) or decode escapes such as "\ud800" into lone surrogates, which no
# parser, database or terminal takes. Browsers know none of them (WHATWG Encoding).
_NOT_PAGE_CODECS: Final = frozenset(
    {"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape", "utf-7"}
)


def _known_codec(label: str) -> str | None:
    """The codec a charset label names, or None for a label to ignore: unknown, or naming
    a codec that does not decode bytes into text (`charset=base64`, `rot13`, `zlib`: bytes to
    bytes or text to text) or that no page is written in (see `_NOT_PAGE_CODECS`)."""
    label = label.strip().lower()
    label = _WHATWG_ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except LookupError:
        return None
    if not info._is_text_encoding or info.name in _NOT_PAGE_CODECS:
        return None
    return info.name


def detect_encoding(body: bytes, content_type: str) -> str:
    """Return the codec name to decode an HTML body with.

    Order: byte-order mark, Content-Type charset, `<meta charset>` in the first 2 KiB, then
    UTF-8 if the body is valid UTF-8, else windows-1252 (which decodes any byte string). A
    label that is unknown or names no page encoding (`_known_codec`) counts as absent.
    """
    for bom, bom_codec in _BOMS:
        if body.startswith(bom):
            return bom_codec
    declared = _CHARSET_IN_HEADER.search(content_type)
    codec = _known_codec(declared.group(1)) if declared else None
    if codec is not None and _decodes(body, codec):
        return codec
    in_meta = _CHARSET_IN_META.search(body[:2048])
    codec = _known_codec(in_meta.group(1).decode("ascii", "replace")) if in_meta else None
    if codec is not None and codec.startswith("utf-16"):
        codec = "utf-8"  # a <meta> that ASCII can read cannot be in UTF-16
    if codec is not None and _decodes(body, codec):
        return codec
    if _decodes(body, "utf-8"):
        return "utf-8"
    return "cp1252"


def _decodes(body: bytes, codec: str) -> bool:
    """Return whether `body` decodes cleanly (a declared charset that is wrong does not)."""
    if codec.startswith("utf-8"):
        try:
            body.decode(codec)
        except UnicodeDecodeError:
            return False
        return True
    return True  # single-byte and legacy codecs: trust the declaration, decode with replace


def decode_body(body: bytes, encoding: str) -> str:
    """Decode `body`, replacing undecodable bytes, and drop NUL characters."""
    text = body.decode(encoding, errors="replace")
    return text.replace("\x00", "") if "\x00" in text else text
