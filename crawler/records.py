"""The values that flow between the crawl's tasks: claimed requests in, page results out.

A worker turns one `Claimed` request into one `PageResult`; the storage writer commits each
`PageResult` (its page, items, links, errors, newly discovered URLs and the request's final
state) in a single transaction. Every time in a record is `utc_now()` text.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, final

from crawler.errors import SkipReason
from crawler.spider.http import Request

__all__ = [
    "MAX_ELAPSED_MS",
    "Candidate",
    "Claimed",
    "DropReason",
    "ErrorRecord",
    "HostRecord",
    "ItemErrorRecord",
    "ItemKey",
    "PageChange",
    "PageRecord",
    "PageResult",
    "Previous",
    "RequestState",
    "RobotsRecord",
    "Skipped",
    "utc_now",
]


MAX_ELAPSED_MS: Final = 1e12
"""The longest timing a `PageRecord` holds (31 years): sums of many stay finite."""


def utc_now() -> str:
    """Return the current time as ISO-8601 UTC text, the format of every `*_at` column
    (`2026-12-05T06:55:51.397+00:00`, as `datetime.isoformat(timespec="milliseconds")`).

    Called for every page: the date and time of day are formatted once per second.
    """
    now = time.time()
    second = int(now)
    return f"{_utc_second(second)}.{int((now - second) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class RequestState(StrEnum):
    """The state of a row in `requests`; the value is what the `state` column stores."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class DropReason(StrEnum):
    """Why an item was not stored; the value is the key in the `items_dropped` stats."""

    INVALID = "invalid"
    """A field did not fit its type, or a de-duplication field is missing; see `item_errors`."""
    DUPLICATE = "duplicate"
    """Its de-duplication key (`Spider.dedupe_items_by`) was stored before."""
    PROCESS_ITEM = "process_item"
    """The spider's `process_item` returned None."""


class PageChange(StrEnum):
    """What a response does to its request's stored page (see crawler.engine.recrawl)."""

    NEW = "new"
    """The first response: the page is stored."""
    CHANGED = "changed"
    """A re-fetch with other content (or another status): the page and its items are replaced."""
    UNCHANGED = "unchanged"
    """A re-fetch answered 304, or with the same body: only the time of the fetch is kept."""
    ERROR = "error"
    """A re-fetch answered 429 or 5xx: recorded in `fetches`, the stored page is kept."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Previous:
    """What a re-fetch knows of the page stored before: the validators it sends back and
    the hash that tells an unchanged body."""

    etag: str | None
    last_modified: str | None
    body_hash: int | None


@final
@dataclass(slots=True, kw_only=True)
class Claimed:
    """A request taken from the frontier by this process, with its row id."""

    id: int
    request: Request
    attempts: int
    """Attempts already made in earlier runs or before a long Retry-After wait."""
    previous: Previous | None = None
    """Set when the request has a stored page: it is a re-fetch (a re-crawl)."""


@final
@dataclass(slots=True, kw_only=True)
class Candidate:
    """A URL that passed the admission checks; the writer de-duplicates it against the table."""

    url: str
    fingerprint: int
    host: str
    request: Request
    parent_id: int | None
    meta_json: str | None
    headers_json: str | None
    lastmod: str | None = None
    """The request's `lastmod` (a sitemap's), stored in `requests.lastmod`."""


@final
@dataclass(slots=True, kw_only=True)
class Skipped:
    """A URL refused at admission, recorded with its reason (duplicates are only counted)."""

    url: str
    fingerprint: int
    host: str
    reason: SkipReason
    depth: int
    parent_id: int | None


@final
@dataclass(slots=True, kw_only=True)
class PageRecord:
    """One received HTTP response, as stored in `pages`."""

    url: str
    final_url: str
    status: int
    content_type: str
    encoding: str | None
    size_bytes: int
    depth: int
    elapsed_ms: float
    fetched_at: str
    body: bytes | None
    """The gzip-compressed body when `store_body` is on."""
    etag: str | None = None
    last_modified: str | None = None
    body_hash: int | None = None
    """XXH3-64 of the decoded body (crawler.engine.recrawl.body_hash)."""
    change: PageChange = PageChange.NEW
    conditional: bool = False
    """Whether the request carried validators (If-None-Match / If-Modified-Since)."""
    exchange: tuple[str, str, str, str] | None = None
    """With `store_body`, for `fetches`: HTTP version, reason phrase, and the response's and
    the request's headers as JSON arrays of [name, value] pairs."""

    def __post_init__(self) -> None:
        # A timing is stored in `pages`/`fetches` and summed by the dashboard's samples
        # (crawler.store.samples): NaN or an infinity there has no JSON or SQL number, and
        # one such row fails every later sample. So every record holds a duration in range.
        elapsed = self.elapsed_ms
        if not 0.0 <= elapsed <= MAX_ELAPSED_MS:  # also NaN
            self.elapsed_ms = MAX_ELAPSED_MS if elapsed > MAX_ELAPSED_MS else 0.0


@final
@dataclass(slots=True, kw_only=True)
class ErrorRecord:
    """One failure, as stored in `errors`: a failed attempt, a spider exception, a bad item."""

    url: str
    kind: str
    message: str
    attempt: int
    callback: str | None
    created_at: str


@final
@dataclass(slots=True, kw_only=True)
class ItemErrorRecord:
    """An item refused on its way in (a field of the wrong type, a missing de-duplication
    field), as stored in `item_errors`."""

    url: str
    callback: str
    item_type: str
    field: str
    """The first bad field (`price`, `tags[2]`); the message lists every problem."""
    message: str
    data: str
    """The item as yielded, as JSON."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ItemKey:
    """An item's de-duplication key (see `Spider.dedupe_items_by`)."""

    type: str
    key: str
    """The key fields' values, as a JSON array."""
    key_hash: int
    """64-bit hash of `key`; `item_keys` holds one row per (type, key_hash)."""


@final
@dataclass(slots=True, kw_only=True)
class RobotsRecord:
    """One fetch of a robots.txt, as stored in `robots` (one row per robots.txt URL)."""

    url: str
    host: str
    fetched_at: str
    status: int | None
    """The HTTP status; None when no response arrived."""
    outcome: str
    """`rules`, `allow_all` or `disallow_all` (see crawler.fetch.robots.RobotsOutcome)."""
    crawl_delay: float | None
    body: str | None
    error: str | None
    """Why the outcome is `allow_all` or `disallow_all`, when it is not the rules."""


@final
@dataclass(slots=True, kw_only=True)
class HostRecord:
    """What the crawl has learned about one host, as stored in `hosts` (see
    crawler.fetch.politeness): written with every result of the host, read back when the
    host gets work again after leaving memory, or in a later run. Times are unix times.

    Not frozen, though nothing changes one once made: one is made for every page, and a
    frozen dataclass's `__init__` takes 2.5 times as long (`object.__setattr__` per field).
    """

    host: str
    crawl_delay: float | None
    """robots.txt `Crawl-delay` (capped at `crawl_delay_max`), seconds; None: none asked."""
    throttle_delay: float
    """The throttle's delay between two requests' starts, seconds."""
    throttle_concurrency: int
    """The throttle's limit of requests in flight."""
    not_before: float | None
    """No request of the host starts before this (a cool-down after 429/503, or the delay)."""
    last_status: int | None
    """The status of the host's last response."""
    cookies: str | None = None
    """The cookies the host is sent, as JSON (crawler.fetch.cookies); None: unchanged."""


@final
@dataclass(slots=True, kw_only=True)
class PageResult:
    """Everything one request produced; committed together, in one transaction."""

    request_id: int
    url: str
    state: RequestState
    reason: str | None = None
    attempts: int = 0
    not_before: float | None = None
    """Set when the request goes back to the frontier to wait out a long Retry-After."""
    page: PageRecord | None = None
    items: list[tuple[str, str]] = field(default_factory=list)
    """(type name, JSON data) pairs."""
    item_classes: dict[type, str] = field(default_factory=dict)
    """The dataclass of each dataclass item in `items`, with its type name: the writer makes
    their typed tables from these (see crawler.store.item_tables)."""
    links: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    item_keys: dict[int, ItemKey] = field(default_factory=dict)
    """De-duplication keys of `items`, by index; the writer drops items whose key it has seen."""
    item_errors: list[ItemErrorRecord] = field(default_factory=list)
    dropped: list[DropReason] = field(default_factory=list)
    """Why items were dropped before storage (`process_item`), one entry per item."""
    robots: RobotsRecord | None = None
    """The robots.txt fetched for this request's host before fetching the request."""
    host: HostRecord | None = None
    """The state of the request's host after it (written to `hosts`)."""
