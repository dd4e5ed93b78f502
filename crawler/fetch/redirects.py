"""Redirects, one hop at a time: which statuses redirect, whether a `Location` may be followed
(valid, http(s), no loop, allowed by the crawl), the method the next hop uses, and the
credential headers a redirect to another origin drops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from yarl import URL

from crawler.errors import RedirectError
from crawler.links import try_canonical_url

__all__ = [
    "REDIRECT_STATUSES",
    "RedirectCheck",
    "RedirectGate",
    "method_after",
    "redirect_target",
    "same_origin",
    "without_credentials",
]

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Request headers that stay with their origin: dropped on a redirect to another scheme, host
or port, as requests and httpx do, so that a redirect cannot hand them to another site."""

RedirectCheck = Callable[[str], str | None]
"""Given a redirect target URL, return why it may not be followed, or None."""
RedirectGate = Callable[[str], bool]
"""Given a redirect target URL the crawl may follow, return whether the crawl already knows
it (then the redirect is not followed: the 3xx response is the answer), else claim it."""


def redirect_target(url: str, location: str, visited: set[str], check: RedirectCheck) -> str:
    """The canonical URL a `Location` at `url` points to, or a `RedirectError` saying why it
    may not be followed."""
    target = try_canonical_url(location, url)
    if target is None:
        raise RedirectError(url, f"invalid redirect target {location!r}")
    if not target.startswith(("http://", "https://")):
        raise RedirectError(url, f"redirect to unsupported scheme: {target[:100]}")
    if target in visited:
        raise RedirectError(url, f"redirect loop at {target}")
    if (refusal := check(target)) is not None:
        raise RedirectError(url, f"redirect to {target} refused: {refusal}")
    return target


def method_after(status: int, method: str) -> str:
    """The method of the next hop: a 303, or a 301/302 answering a POST, turns it into GET."""
    if status == 303 or (status in (301, 302) and method == "POST"):
        return "GET"
    return method


def same_origin(url: str, other: str) -> bool:
    """Whether two URLs share scheme, host and port (default ports made explicit)."""
    a, b = URL(url, encoded=True), URL(other, encoded=True)
    return a.scheme == b.scheme and a.raw_host == b.raw_host and a.port == b.port


def without_credentials(headers: Mapping[str, str]) -> dict[str, str] | None:
    """`headers` less those that stay with their origin; None when nothing is left."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
    return kept or None
