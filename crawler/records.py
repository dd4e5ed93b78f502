"""The values that flow between the crawl's tasks: claimed requests in, page results out.

A worker turns one `Claimed` request into one `PageResult`; the storage writer commits each
`PageResult` (its page, items, links, errors, newly discovered URLs and the request's final
state) in a single transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import final

from crawler.errors import SkipReason
from crawler.http import Request

__all__ = [
    "Candidate",
    "Claimed",
    "ErrorRecord",
    "PageRecord",
    "PageResult",
    "RequestState",
    "Skipped",
]


class RequestState(StrEnum):
    """The state of a row in `requests`; the value is what the `state` column stores."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@final
@dataclass(slots=True, kw_only=True)
class Claimed:
    """A request taken from the frontier by this process, with its row id."""

    id: int
    request: Request
    attempts: int
    """Attempts already made in earlier runs or before a long Retry-After wait."""


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
    links: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
