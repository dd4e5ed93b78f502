"""The crawler's exception hierarchy and skip reasons: what can go wrong, named once.

```
CrawlerError                 base of everything we raise on purpose
├── ConfigError              bad config.toml / -s value / unknown or ill-typed setting → exit 2
├── SpiderError              a spider is wrong: no name, unknown callback, unserialisable meta/item
│   └── SpiderNotFound       unknown spider name (the message lists the known ones)    → exit 2
├── FetchError               a request produced no usable response; has .url and .kind
│   ├── FetchTimeout         kind = "timeout"
│   ├── ConnectError         kind = "connection"   (refused, reset, DNS)
│   ├── ProtocolError        kind = "protocol"     (bad chunking, corrupt gzip, bad Content-Length)
│   ├── HTTPStatusError      kind = "http_status"  (.status, .retry_after)
│   ├── ResponseTooLarge     kind = "too_large"
│   ├── RedirectError        kind = "redirect"     (loop, too many, bad scheme, offsite target)
│   └── PrivateAddressError  kind = "private_address" (an internal address: fetch.addresses)
├── StorageError             not a crawl database, newer schema, damaged, missing     → exit 2
│   └── StorageFailure       the storage fails: disk full, read-only, I/O error, locked → exit 1
└── QueryError               `crawler query` SQL rejected by SQLite                     → exit 2

StopCrawl(Exception)         raised by a callback to end the crawl cleanly (control flow)
```

Skips are not exceptions: `SkipReason` values say why a URL was not crawled.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = [
    "ConfigError",
    "ConnectError",
    "CrawlerError",
    "FetchError",
    "FetchTimeout",
    "HTTPStatusError",
    "PrivateAddressError",
    "ProtocolError",
    "QueryError",
    "RedirectError",
    "ResponseTooLarge",
    "SkipReason",
    "SpiderError",
    "SpiderNotFound",
    "StopCrawl",
    "StorageError",
    "StorageFailure",
]


class CrawlerError(Exception):
    """Base class of every error the crawler raises on purpose."""


class ConfigError(CrawlerError):
    """A setting, flag or configuration file is wrong; the message names it."""


class SpiderError(CrawlerError):
    """A spider is defined or used wrongly (no name, unknown callback, bad meta)."""


class SpiderNotFound(SpiderError):
    """No spider of the requested name or path exists."""


class StorageError(CrawlerError):
    """The crawl database cannot be used: missing, not a crawl database, disk full, read-only."""


class StorageFailure(StorageError):
    """The storage under a usable file fails: disk full, read-only file or filesystem, I/O
    error, locked for too long. Unlike a wrong file, running again once it is mended works."""


class QueryError(CrawlerError):
    """SQLite rejected a query given on the command line."""


class FetchError(CrawlerError):
    """A request produced no usable response.

    `kind` is a class constant and is exactly what the `errors.kind` column and the summary
    show for this failure.
    """

    kind: ClassVar[str] = "fetch"

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.message = message


class FetchTimeout(FetchError):
    """The server did not answer, or did not finish answering, in time."""

    kind = "timeout"


class ConnectError(FetchError):
    """The connection could not be made or broke: refused, reset, DNS failure."""

    kind = "connection"


class ProtocolError(FetchError):
    """The server broke HTTP: bad chunking, corrupt compression, wrong Content-Length."""

    kind = "protocol"


class ResponseTooLarge(FetchError):
    """The decoded body grew past `max_size`."""

    kind = "too_large"


class RedirectError(FetchError):
    """A redirect could not be followed: a loop, too many hops, a bad or offsite target."""

    kind = "redirect"


class PrivateAddressError(FetchError):
    """The request, or one of its redirects, would connect to an internal address (loopback,
    private, link-local…) that the crawl may not reach; never retried."""

    kind = "private_address"


class HTTPStatusError(FetchError):
    """The server answered with an error status (4xx or 5xx)."""

    kind = "http_status"

    def __init__(
        self, url: str, status: int, retry_after: float | None = None, message: str = ""
    ) -> None:
        super().__init__(url, message or f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class StopCrawl(Exception):
    """Raise from a callback to end the crawl cleanly; in-flight work is finished first."""

    def __init__(self, reason: str = "stopped by spider") -> None:
        super().__init__(reason)
        self.reason = reason


class SkipReason(StrEnum):
    """Why a URL was not crawled; the value is what `requests.reason` stores."""

    SCHEME = "scheme"
    INVALID = "invalid_url"
    URL_TOO_LONG = "url_too_long"
    OFFSITE = "offsite"
    DEPTH = "depth"
    DUPLICATE = "duplicate"
    MAX_PAGES = "max_pages"
    MAX_PAGES_PER_HOST = "max_pages_per_host"
    ROBOTS = "robots"
    ROBOTS_UNAVAILABLE = "robots_unavailable"
    """robots.txt could not be fetched after `max_retries` cool-downs (not a `Disallow`)."""
    RULE = "rule"
    TRAP = "trap"
    REDIRECT_TARGET = "redirect_target"
    """Fetched as the target of another request's redirect: that request's page holds it."""
    INTERNAL = "internal"
    """The database refused the request's row (a value it cannot hold); see `errors`."""
