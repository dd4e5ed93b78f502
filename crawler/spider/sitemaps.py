"""Sitemaps: `SitemapSpider` crawls the URLs that sitemaps list.

```python
class NewsSpider(SitemapSpider):
    name = "news"
    sitemap_urls = ["https://news.example/robots.txt"]  # its Sitemap: lines, or sitemap URLs
    sitemap_rules = [(r"/article/", "parse_article")]   # URL regex -> callback; first match wins
    sitemap_follow = [r"/sitemap-news"]                  # which sitemaps of an index to read

    async def parse_article(self, response: Response) -> AsyncIterator[Item]:
        yield {"title": text_of(response.css_first("h1")), "url": response.url}
```

Sitemaps are fetched like any other page (so they are in `requests` and `pages`), with the
callback `parse_sitemap`, which receives every content type (`Spider.any_content_callbacks`).
A `<urlset>` yields a request for each `<url>` whose `<loc>` matches a rule, with that rule's
callback; a `<sitemapindex>` yields a `parse_sitemap` request for each `<sitemap>` matching
`sitemap_follow`; a robots.txt yields one for each `Sitemap:` line; a plain-text sitemap one
request per line. `sitemap_filter(entry)` sees every entry, with its `<lastmod>`, first.

Gzipped sitemaps (`.xml.gz`, recognised by the gzip magic bytes, whatever the Content-Type;
`Content-Encoding: gzip` is already undone by the fetcher) are decompressed while parsing, up
to 50 MiB (the sitemaps.org limit). XML is parsed incrementally with
`xml.etree.ElementTree.XMLPullParser`, each entry is dropped once read, and a document with
a DTD (`<!DOCTYPE`) is refused, so no entity is ever expanded (billion laughs) or fetched.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, final
from xml.etree import ElementTree

from protego import Protego
from yarl import URL

from crawler.bodies import BodyTooLarge, CorruptBody, decoder_for
from crawler.errors import SpiderError
from crawler.spider.base import Spider
from crawler.spider.http import Request, Response

__all__ = ["MAX_SITEMAP_SIZE", "SitemapEntry", "SitemapSpider", "iter_sitemap"]

MAX_SITEMAP_SIZE: Final = 50 * 1024 * 1024
"""Largest (decompressed) sitemap read, in bytes: the sitemaps.org limit."""

_CHUNK: Final = 64 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"


@final
@dataclass(frozen=True, slots=True)
class SitemapEntry:
    """One `<url>` of a urlset or `<sitemap>` of a sitemap index."""

    loc: str
    lastmod: datetime | None = None
    """The `<lastmod>` as an aware datetime (UTC when no zone is given), if valid."""
    is_sitemap: bool = False
    """True for an entry of a sitemap index: `loc` is another sitemap."""


def iter_sitemap(body: bytes) -> Iterator[SitemapEntry]:
    """Yield the entries of a sitemap: XML (urlset or sitemap index) or plain text, gzipped
    or not.

    Raises:
        ValueError: the body is not a sitemap, has a DTD, is corrupt or larger than
            `MAX_SITEMAP_SIZE` once decompressed. Entries before the problem were yielded.
    """
    chunks = _decompressed(body) if body.startswith(_GZIP_MAGIC) else _chunks(body)
    first = next(chunks, b"")
    if first.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
        yield from _xml_entries(first, chunks)
    else:
        yield from _text_entries(first, chunks)


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), _CHUNK):
        yield body[start : start + _CHUNK]


def _decompressed(body: bytes) -> Iterator[bytes]:
    decoder = decoder_for("gzip", MAX_SITEMAP_SIZE)
    try:
        for chunk in _chunks(body):
            if out := decoder.feed(chunk):
                yield out
        if tail := decoder.finish():
            yield tail
    except BodyTooLarge:
        raise ValueError(f"sitemap larger than {MAX_SITEMAP_SIZE} bytes decompressed") from None
    except CorruptBody as exc:
        raise ValueError(f"corrupt gzipped sitemap: {exc}") from None


def _xml_entries(first: bytes, rest: Iterator[bytes]) -> Iterator[SitemapEntry]:
    parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(
        events=("start", "end")
    )
    root: ElementTree.Element | None = None
    seen = b""
    try:
        for chunk in _prepend(first, rest):
            if root is None:  # a DTD, where entities are declared, may only precede the root
                seen = seen[-16:] + chunk
                if b"<!DOCTYPE" in seen:
                    raise ValueError("sitemap has a DTD (<!DOCTYPE>): refused, no entities")
            parser.feed(chunk)
            for event in parser.read_events():
                element = event[-1]
                if not isinstance(element, ElementTree.Element):
                    continue
                if event[0] == "start":
                    if root is None:
                        root = element
                        if _local(root.tag) not in ("urlset", "sitemapindex"):
                            raise ValueError(f"not a sitemap: root element <{_local(root.tag)}>")
                    continue
                name = _local(element.tag)
                if root is not None and name in ("url", "sitemap") and element is not root:
                    if entry := _entry(element, is_sitemap=name == "sitemap"):
                        yield entry
                    root.clear()  # drop what was read: memory stays flat
        parser.close()
    except ElementTree.ParseError as exc:
        raise ValueError(f"sitemap is not well-formed XML: {exc}") from None
    except LookupError as exc:  # expat looks up the XML declaration's encoding="…" itself
        raise ValueError(f"sitemap declares an unknown encoding: {exc}") from None


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _text_entries(first: bytes, rest: Iterator[bytes]) -> Iterator[SitemapEntry]:
    """A text sitemap: one absolute URL per line (sitemaps.org)."""
    pending = b""
    for chunk in _prepend(first, rest):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield from _url_lines(lines)
    yield from _url_lines([pending])


def _url_lines(lines: list[bytes]) -> Iterator[SitemapEntry]:
    for line in lines:
        url = line.decode("utf-8", errors="replace").strip()
        if url.startswith(("http://", "https://")):
            yield SitemapEntry(url)


def _local(tag: str) -> str:
    """The element name without its namespace: `{http://…}url` → `url`."""
    return tag.rsplit("}", 1)[-1]


def _entry(element: ElementTree.Element, *, is_sitemap: bool) -> SitemapEntry | None:
    loc = lastmod = None
    for child in element:
        name = _local(child.tag)
        if name == "loc":
            loc = (child.text or "").strip()
        elif name == "lastmod":
            lastmod = (child.text or "").strip()
    if not loc:
        return None
    return SitemapEntry(loc, parse_lastmod(lastmod), is_sitemap)


def parse_lastmod(value: str | None) -> datetime | None:
    """Parse a W3C datetime (`2024`, `2024-05`, `2024-05-01`, `2024-05-01T10:00:00+02:00`)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        for form in ("%Y-%m", "%Y"):
            try:
                moment = datetime.strptime(value, form)
                break
            except ValueError:
                continue
        else:
            return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class SitemapSpider(Spider):
    """A spider that crawls what sitemaps list (see the module docstring).

    `sitemap_urls` are sitemap, sitemap index or robots.txt URLs. `sitemap_rules` maps URL
    regexes (`re.search`) to callback names, the first match wins, and URLs matching none
    are not requested. `sitemap_follow` says which sitemaps of an index are read (all, by
    default). `start_urls`, if any, are crawled with `parse` as usual.
    """

    sitemap_urls: ClassVar[Sequence[str]] = ()
    sitemap_rules: ClassVar[Sequence[tuple[str, str]]] = (("", "parse"),)
    sitemap_follow: ClassVar[Sequence[str]] = ("",)
    any_content_callbacks: ClassVar[Sequence[str]] = ("parse_sitemap",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for pattern in (*(p for p, _ in cls.sitemap_rules), *cls.sitemap_follow):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise SpiderError(f"{cls.__qualname__}: bad regex {pattern!r}: {exc}") from None
        for _, callback in cls.sitemap_rules:
            method = getattr(cls, callback, None)
            if method is None or not inspect.isasyncgenfunction(method):
                raise SpiderError(
                    f"{cls.__qualname__}.sitemap_rules: {callback!r} is not an async generator "
                    "method of the spider"
                )

    async def start_requests(self) -> AsyncIterator[Request]:
        """Request every `sitemap_urls` entry with `parse_sitemap`, then the `start_urls`."""
        for url in self.sitemap_urls:
            yield Request(url, callback=self.parse_sitemap)
        async for request in super().start_requests():
            yield request

    def sitemap_filter(self, entry: SitemapEntry) -> bool:
        """Return whether to follow an entry; override to filter, e.g. on `entry.lastmod`."""
        return True

    async def parse_sitemap(self, response: Response) -> AsyncIterator[Request]:
        """Read a sitemap, sitemap index or robots.txt and request what it lists."""
        if URL(response.url).path == "/robots.txt":
            for url in Protego.parse(response.text).sitemaps:
                yield response.follow(url, callback=self.parse_sitemap)
            return
        for entry in iter_sitemap(response.body):
            if not self.sitemap_filter(entry):
                continue
            if entry.is_sitemap:
                if any(re.search(pattern, entry.loc) for pattern in self.sitemap_follow):
                    yield response.follow(entry.loc, callback=self.parse_sitemap)
            elif (callback := self._callback_for(entry.loc)) is not None:
                yield response.follow(entry.loc, callback=callback, lastmod=entry.lastmod)

    def _callback_for(self, url: str) -> str | None:
        for pattern, callback in self.sitemap_rules:
            if re.search(pattern, url):
                return callback
        return None
