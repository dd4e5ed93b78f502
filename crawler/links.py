"""Pure URL functions: canonical form, fingerprint, host, and href extraction from a page.

Canonicalisation is deliberately conservative (RFC 3986): only the scheme and host are
case-folded, the fragment and a default port are dropped, dot segments are resolved and
percent-encoding is normalised as section 6.2.2.2 allows: escapes of unreserved characters
are decoded, every other escape keeps its encoding (in upper case), so that the server
receives what the page linked. Paths and queries keep their case and their order.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import string
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
    "normalise_domain",
    "parse_canonical",
    "try_canonical_url",
]

_STRIP = " \t\n\r\f\v\x00"
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def canonical_url(url: str, base: str | URL | None = None) -> str:
    """Return the canonical absolute form of `url`, resolved against `base` if given.

    Raises:
        ValueError: the URL cannot be parsed (bad port, bad host) or is not absolute.
    """
    return _canonical(url, base)[0]


def parse_canonical(url: str, base: str | URL | None = None) -> tuple[str, URL]:
    """Return the canonical form of `url` and its parsed URL (parsing only once).

    Raises:
        ValueError: as `canonical_url`.
    """
    text, parsed, shielded = _canonical(url, base)
    return text, (URL(text, encoded=True) if shielded else parsed)


def _canonical(url: str, base: str | URL | None) -> tuple[str, URL, bool]:
    """The canonical form of `url`, its parsed URL, and whether that was shielded (see
    `_shield`: then only its scheme and host may be read)."""
    raw = url.strip(_STRIP)
    if not raw.isascii() and _LONE_SURROGATE.search(raw):  # yarl would drop it silently
        raise ValueError(f"URL holds a lone surrogate: {raw!r}")
    shielded_url = _shield(raw)
    shielded = shielded_url is not None
    parsed = URL(raw if shielded_url is None else shielded_url)
    if base is not None:
        base_text = base if isinstance(base, str) else str(base)
        shielded_base = _shield(base_text)
        if shielded_base is None:
            base_url = base if isinstance(base, URL) else URL(base_text)
        else:
            base_url, shielded = URL(shielded_base), True
        # yarl joins a relative path to the *decoded* segments of a base path that does not
        # end in "/", losing its escapes (and the shield): join to the base's directory.
        base_path = base_url.raw_path
        if (
            "%" in base_path
            and parsed.raw_path[:1] not in ("", "/")
            and not base_path.endswith("/")
        ):
            directory = base_path[: base_path.rfind("/") + 1]
            base_url = base_url.with_path(directory, encoded=True)
        parsed = base_url.join(parsed)
    if not parsed.scheme:  # "//host/path" is absolute to yarl, but not without its base
        raise ValueError(f"not an absolute URL: {raw!r}")
    if parsed.scheme in ("http", "https"):
        if not parsed.raw_host:
            raise ValueError(f"URL has no host: {raw!r}")
        if _NOT_IN_A_HOST.search(parsed.raw_host):  # yarl keeps them, and drops IPv6 brackets
            raise ValueError(f"URL host holds a control character or space: {raw!r}")
        if ":" in parsed.raw_host:  # an IPv6 literal: yarl prints an invalid one unbracketed
            try:
                ipaddress.IPv6Address(parsed.raw_host.partition("%")[0])
            except ValueError:
                raise ValueError(f"URL host is not an IPv6 address: {raw!r}") from None
        parsed.port  # noqa: B018 - validates the port (raises ValueError when out of range)
        if parsed.raw_fragment:
            parsed = parsed.with_fragment(None)
        text = str(parsed)
        if parsed.raw_path == "/" and not parsed.raw_query_string and not text.endswith("/"):
            text += "/"  # yarl prints a bare host without the root path
    else:
        text = str(parsed)
    if shielded:
        text = _unshield(text)
    return text, parsed, shielded


_NOT_IN_A_HOST: Final = re.compile(r"[\x00-\x20\x7f-\xa0]")
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")


def _shielded_escape(hex_digits: str) -> str:
    """What an escape becomes: its character when unreserved, else itself, shielded."""
    char = chr(int(hex_digits, 16))
    return char if char in _UNRESERVED else "%25" + hex_digits.upper()


# yarl's requoting decodes the escapes of some reserved characters ("%2F" and "%3F" in a
# query, "%3A" and "%40" in a path), which changes what the server receives. So before yarl
# sees a URL, its escapes are normalised here, and every "%" is shielded as "%25" (which yarl
# keeps as it is); `_unshield` drops the shield from yarl's output. A "%" that starts no
# escape stands for itself ("%25"), and a space becomes "%20" (yarl writes "+" in a query).
# Keys: the two hex digits after a "%", in any case.
_SHIELD: Final = {
    a + b: _shielded_escape(a + b) for a in string.hexdigits for b in string.hexdigits
}
_SCHEME_AND_AUTHORITY: Final = re.compile(r"(?:[A-Za-z0-9+.-]+:)?(?://[^/?#]*)?")
_C0_OR_SPACE: Final = "".join(map(chr, range(0x21)))


def _path_start(url: str) -> int:
    """Where the path of `url` starts: after its scheme and authority, as yarl splits it."""
    match = _SCHEME_AND_AUTHORITY.match(url)
    return 0 if match is None else match.end()


def _shield(url: str) -> str | None:
    """`url` with its path, query and fragment ready for yarl (see `_SHIELD`); None when
    they have nothing to shield."""
    if "%" not in url and " " not in url:
        return None
    # yarl drops these before splitting, and so must the shield, or "%\n41" would differ
    url = url.lstrip(_C0_OR_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    start = _path_start(url)
    tail = url[start:]
    if "%" not in tail and " " not in tail:
        return None
    head, *pieces = tail.replace(" ", "%20").split("%")
    shielded = [url[:start], head]
    for piece in pieces:
        escape = _SHIELD.get(piece[:2])
        if escape is None:
            shielded += ("%2525", piece)
        else:
            shielded += (escape, piece[2:])
    return "".join(shielded)


def _unshield(text: str) -> str:
    """yarl's output for a shielded URL, with the shield taken off. Every "%25" in its path,
    query and fragment starts a shield: yarl never met a "%" there to write it."""
    start = _path_start(text)
    return text[:start] + text[start:].replace("%25", "%")


class CanonicalParts(NamedTuple):
    """A canonical absolute URL with the two parts admission needs."""

    url: str
    scheme: str
    host: str
    """Lowercase, IDNA-encoded host; "" for URLs without one (mailto:, javascript:)."""


# Matches only what parse_canonical would return unchanged: lowercase http(s) scheme and
# host, a non-default port, a path without dot segments, no fragment, and (checked apart, by
# `_NOT_CANONICAL_ESCAPE`) no "%" but in an upper-case escape of a reserved or non-ASCII byte.
# Most links a crawl sees (the output of extract_links and follow) are already in this form.
_ALREADY_CANONICAL: Final = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)"
    r"(?::([1-9][0-9]{0,4}))?"
    r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*)(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]+)?"
)
_DOT_SEGMENT: Final = re.compile(r"/\.\.?(?:/|$|\?)")
# A "%" that starts no escape, or an escape that is in lower case or of an unreserved
# character (digits 3x, letters 41-5A and 61-7A, "-" 2D, "." 2E, "_" 5F, "~" 7E).
_NOT_CANONICAL_ESCAPE: Final = re.compile(
    r"%(?![0-9A-F]{2})|%(?:3[0-9]|[46][1-9A-F]|[57][0-9A]|2[DE]|5F|7E)"
)


def canonical_parts(url: str) -> CanonicalParts:
    """Return the canonical form of an absolute URL with its scheme and host.

    URLs that are already canonical take a fast path that skips parsing; everything else
    goes through yarl (`parse_canonical`). Both give the same result.

    Raises:
        ValueError: as `canonical_url`.
    """
    if (parts := _already_canonical(url)) is not None:
        return parts
    text, parsed, _ = _canonical(url, None)
    return CanonicalParts(text, parsed.scheme, parsed.raw_host or "")


def _already_canonical(url: str) -> CanonicalParts | None:
    """The parts of a URL that is already in canonical form, read without parsing; None when
    it may not be (then yarl decides)."""
    match = _ALREADY_CANONICAL.fullmatch(url)
    if (
        match is not None
        and not _DOT_SEGMENT.search(url)
        and ("%" not in url or not _NOT_CANONICAL_ESCAPE.search(url))
    ):
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
    (ending in "/"), read from its canonical form; the flag says whether plain hrefs may be
    joined to them by concatenation (the directory is that of a canonical http(s) URL)."""
    match = _ALREADY_CANONICAL.fullmatch(base)
    if match is not None and _already_canonical(base) is not None:
        origin, path = base[: match.start(4)], match.group(4)
        return origin, origin + path[: path.rfind("/") + 1], True
    try:
        canonical = canonical_url(base)
    except (ValueError, TypeError, UnicodeError):  # hrefs then resolve to themselves
        return base, base, False
    start = _path_start(canonical)
    origin, path = canonical[:start], canonical[start:].partition("?")[0]
    directory = origin + path[: path.rfind("/") + 1]
    return origin, directory, _is_canonical(directory)


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
    if resolved is None:  # a broken <base> does not make an absolute href invalid
        resolved = try_canonical_url(href)
    return href if resolved is None else resolved


def normalise_domain(domain: str) -> str:
    """Return an allowed-domain entry as a bare lowercase IDNA host (no scheme, no port)."""
    domain = domain.strip().lower()
    if "://" in domain:
        domain = URL(domain).raw_host or ""
    else:
        domain = URL(f"http://{domain}").raw_host or ""
    return domain.strip(".")
