"""Pure URL functions: canonical form, fingerprint, host, and href extraction from a page.

Canonicalisation is deliberately conservative (RFC 3986): only the scheme and host are
case-folded, the fragment and a default port are dropped, dot segments are resolved and
percent-encoding is normalised. Paths and queries keep their case and their order.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from typing import Final, NamedTuple

from selectolax.lexbor import LexborHTMLParser, LexborNode
from yarl import URL

__all__ = [
    "CanonicalParts",
    "canonical_parts",
    "canonical_url",
    "extract_links",
    "extract_links_in",
    "fingerprint",
    "host_of",
    "parse_canonical",
    "try_canonical_url",
]
    "normalise_domain",

_STRIP = " \t\n\r\f\v\x00"
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def canonical_url(url: str, base: str | URL | None = None) -> str:
    """Return the canonical absolute form of `url`, resolved against `base` if given.

    Raises:
        ValueError: the URL cannot be parsed (bad port, bad host) or is not absolute.
    """
    return parse_canonical(url, base)[0]


def parse_canonical(url: str, base: str | URL | None = None) -> tuple[str, URL]:
    """Return the canonical form of `url` and its parsed URL (parsing only once).

    Raises:
        ValueError: as `canonical_url`.
    """
    raw = url.strip(_STRIP)
    if not raw.isascii() and _LONE_SURROGATE.search(raw):  # yarl would drop it silently
        raise ValueError(f"URL holds a lone surrogate: {raw!r}")
    parsed = URL(raw)
    if base is not None:
        parsed = (base if isinstance(base, URL) else URL(base)).join(parsed)
    if not parsed.scheme:  # "//host/path" is absolute to yarl, but not without its base
        raise ValueError(f"not an absolute URL: {raw!r}")
    if parsed.scheme in ("http", "https"):
        if not parsed.raw_host:
            raise ValueError(f"URL has no host: {raw!r}")
        parsed.port  # noqa: B018 - validates the port (raises ValueError when out of range)
        if parsed.raw_fragment:
            parsed = parsed.with_fragment(None)
        text = str(parsed)
        if parsed.raw_path == "/" and not parsed.raw_query_string and not text.endswith("/"):
            text += "/"  # yarl prints a bare host without the root path
        return text, parsed
    return str(parsed), parsed


class CanonicalParts(NamedTuple):
    """A canonical absolute URL with the two parts admission needs."""

    url: str
    scheme: str
    host: str
    """Lowercase, IDNA-encoded host; "" for URLs without one (mailto:, javascript:)."""


# Matches only what yarl would print unchanged: lowercase http(s) scheme and host, a
# non-default port, a path without dot segments, no percent sign, no fragment. Most links a
# crawl sees (the output of extract_links and follow) are already in this form.
_ALREADY_CANONICAL: Final = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)"
    r"(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*)(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?]+)?"
)
_DOT_SEGMENT: Final = re.compile(r"/\.\.?(?:/|$|\?)")


def canonical_parts(url: str) -> CanonicalParts:
    """Return the canonical form of an absolute URL with its scheme and host.

    URLs that are already canonical take a fast path that skips parsing; everything else
    goes through yarl (`parse_canonical`). Both give the same result.

    Raises:
        ValueError: as `canonical_url`.
    """
    if (parts := _already_canonical(url)) is not None:
        return parts
    text, parsed = parse_canonical(url)
    return CanonicalParts(text, parsed.scheme, parsed.raw_host or "")


def _already_canonical(url: str) -> CanonicalParts | None:
    """The parts of a URL that is already in canonical form, read without parsing; None when
    it may not be (then yarl decides)."""
    match = _ALREADY_CANONICAL.fullmatch(url)
    if match is not None and not _DOT_SEGMENT.search(url):
        scheme, host, port = match.group(1, 2, 3)
        if port is None or (int(port) <= 65535 and port != _DEFAULT_PORTS[scheme]):
            return CanonicalParts(url, scheme, host)
    return None


_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def try_canonical_url(url: str, base: str | URL | None = None) -> str | None:
    """Return `canonical_url(url, base)`, or None when the URL is invalid."""
    try:
        return canonical_url(url, base)
    except (ValueError, TypeError, UnicodeError):
        return None


def fingerprint(canonical: str, method: str = "GET", body: bytes = b"") -> int:
    """Return a signed 64-bit fingerprint of a request, for the de-duplication index.

    GET requests are identified by their canonical URL alone; other methods add the method
    and the body, so two POSTs with different bodies are different requests.
    """
    # surrogatepass: a URL a spider built may hold a lone surrogate; it is refused as
    # invalid, and recorded (so fingerprinted) all the same
    digest = hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=8)
    if method != "GET":
        digest.update(b"\0" + method.encode() + b"\0" + body)
    return int.from_bytes(digest.digest(), "big", signed=True)


_PLAIN_HOST: Final = re.compile(r"https?://([a-z0-9.-]+)(?::[0-9]+)?(?:[/?#]|$)")
"""The host of an http(s) URL whose authority is already lowercase ASCII, without userinfo."""


def host_of(url: str) -> str:
    """Return the lowercase host (IDNA-encoded) of an absolute URL, or "" if it has none."""
    if (plain := _PLAIN_HOST.match(url)) is not None:
        return plain.group(1)
    try:
        return URL(url).raw_host or ""
    except (ValueError, TypeError, UnicodeError):
        return ""


def _base_of(tree: LexborHTMLParser, page_url: str) -> str:
    """Return the base URL for relative links: the page's `<base href>` or the page URL."""
    # The first <base> with an href, anywhere in the document (tags() is a cheaper walk
    # than a CSS query, and most pages have no <base> at all).
    base_node = next((node for node in tree.tags("base") if "href" in node.attrs), None)
    if base_node is not None:
        href = base_node.attributes.get("href")
        if href and href.strip(_STRIP):
            try:
                return str(URL(page_url).join(URL(href.strip(_STRIP))))
            except (ValueError, TypeError, UnicodeError):
                pass
    return page_url


def extract_links(tree: LexborHTMLParser, page_url: str) -> list[str]:
    """Return the page's `<a href>` targets: absolute, fragment-free, de-duplicated, in order.

    An href that cannot be parsed is returned stripped but otherwise as written, so that the
    admission step can record it as an invalid URL instead of losing it silently. Empty hrefs
    and fragment-only hrefs (links to the page itself) are left out.
    """
    hrefs = (node.attributes.get("href") for node in tree.css("a[href]"))
    return _resolve_unique(hrefs, _base_of(tree, page_url))


def extract_links_in(
    nodes: Iterable[LexborNode], tree: LexborHTMLParser, page_url: str
) -> list[str]:
    """Return the `<a href>` targets inside `nodes` (a node that is a link counts), resolved
    and de-duplicated as `extract_links` does (the page's `<base href>` applies)."""
    hrefs = (link.attributes.get("href") for node in nodes for link in node.css("a[href]"))
    return _resolve_unique(hrefs, _base_of(tree, page_url))


# An href that joins to a canonical URL by concatenation: path characters yarl prints as they
# are (no "%", no "#"), an optional non-empty query. Root-relative ones must not start with
# "//" (that is a host); relative ones have no ":" (it could be a scheme). Dot segments are
# checked on the joined result.
_PLAIN_ROOT_RELATIVE: Final = re.compile(
    r"/(?!/)[A-Za-z0-9\-._~!$&'()*+,;=:@/]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?]+)?"
)
_PLAIN_RELATIVE: Final = re.compile(
    r"[A-Za-z0-9\-._~!$&'()*+,;=@][A-Za-z0-9\-._~!$&'()*+,;=@/]*"
    r"(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?]+)?"
)


def _origin_and_directory(base: str) -> tuple[str, str, bool]:
    """Split a base URL into its origin (`scheme://authority`) and the directory of its path
    (ending in "/"); the flag says whether plain hrefs may be joined to them by concatenation
    (the base is canonical and has no percent-escapes, some of which yarl's join decodes)."""
    match = _ALREADY_CANONICAL.fullmatch(base)
    if match is not None and "%" not in base and _already_canonical(base) is not None:
        origin, path = base[: match.start(4)], match.group(4)
        return origin, origin + path[: path.rfind("/") + 1], True
    try:
        parsed = URL(base)
    except (ValueError, TypeError, UnicodeError):  # hrefs then resolve to themselves
        return base, base, False
    origin = f"{parsed.scheme}://{parsed.raw_authority}"
    directory = origin + parsed.raw_path[: parsed.raw_path.rfind("/") + 1]
    return origin, directory, "%" not in directory and _is_canonical(directory)


def _join_plain(href: str, origin: str, directory: str) -> str | None:
    """Join a plain href (see `_PLAIN_RELATIVE`) to a canonical base by concatenation, leading
    "../" segments included; None when it is not plain or the result has dot segments."""
    if href[0] == "/":
        if _PLAIN_ROOT_RELATIVE.fullmatch(href) is None:
            return None
        joined = origin + href
    else:
        root = len(origin) + 1  # the directory never climbs above "origin/"
        while href.startswith("../"):
            href = href[3:]
            if len(directory) > root:
                directory = directory[: directory.rindex("/", 0, -1) + 1]
        if not href or _PLAIN_RELATIVE.fullmatch(href) is None:
            return None
        joined = directory + href
    return None if _DOT_SEGMENT.search(joined) else joined


def _resolve_unique(hrefs: Iterable[str | None], base: str) -> list[str]:
    """Resolve hrefs against `base`, keeping the first occurrence of each result."""
    seen: dict[str, None] = {}
    origin, directory, plain = _origin_and_directory(base)
    self_url = base if plain else try_canonical_url(base)
    for href in hrefs:
        if not href:
            continue
        stripped = href.strip(_STRIP)
        if not stripped or stripped[0] == "#":
            continue
        if "#" in stripped:  # the fragment never changes the result: share cache entries
            stripped = stripped.split("#", 1)[0]
            if not stripped:
                continue
        if plain and (resolved := _join_plain(stripped, origin, directory)) is not None:
            pass
        # Resolve against the least of the base that decides the result (RFC 3986 5.2), so
        # that the pages of one site share cache entries: the origin for root-relative and
        # absolute hrefs, the base's directory for relative paths, the whole base for "?q".
        elif stripped[0] == "/" or _has_scheme(stripped):
            absolute = _already_canonical(stripped) if stripped[0] != "/" else None
            resolved = absolute.url if absolute is not None else _resolve(origin, stripped)
        elif stripped[0] == "?":
            resolved = _resolve(base, stripped)
        else:
            resolved = _resolve(directory, stripped)
        if resolved != self_url:
            seen.setdefault(resolved, None)
    return list(seen)


def _is_canonical(url: str) -> bool:
    """Whether an absolute http(s) URL is already in canonical form."""
    try:
        return canonical_parts(url).url == url
    except (ValueError, TypeError, UnicodeError):
        return False


def _has_scheme(href: str) -> bool:
    """Whether an href starts with `scheme:` (RFC 3986: a letter, then letters, digits, +-.)."""
    colon = href.find(":")
    if colon <= 0:
        return False
    scheme = href[:colon]
    return (
        scheme[0].isascii()
        and scheme[0].isalpha()
        and all(c.isascii() and (c.isalnum() or c in "+-.") for c in scheme)
    )


@functools.lru_cache(maxsize=131_072)
def _resolve(base: str, href: str) -> str:
    """Canonical form of `href` against `base`, or `href` itself when it is invalid (memoised:
    sites repeat the same links on every page)."""
    resolved = try_canonical_url(href, base)
    return href if resolved is None else resolved


def normalise_domain(domain: str) -> str:
    """Return an allowed-domain entry as a bare lowercase IDNA host (no scheme, no port)."""
    domain = domain.strip().lower()
    if "://" in domain:
        domain = URL(domain).raw_host or ""
    else:
        domain = URL(f"http://{domain}").raw_host or ""
    return domain.strip(".")
