"""What a fetch ends in: `Fetched` (a response was received, maybe an error status),
`Failed` (no usable response after retries) or `Deferred` (a long `Retry-After`: fetch again
later), with the `Retry-After` parsing and the error records a failed attempt leaves.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import final

from multidict import CIMultiDictProxy

from crawler.errors import FetchError
from crawler.records import ErrorRecord, utc_now

__all__ = ["Deferred", "Failed", "FetchOutcome", "Fetched", "failure_record", "parse_retry_after"]


@final
@dataclass(slots=True, kw_only=True)
class Fetched:
    """A response was received (its status may still be an error)."""

    url: str
    """Final URL, after redirects."""
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    elapsed_ms: float
    attempts: int
    failures: list[ErrorRecord] = field(default_factory=list)
    """Earlier attempts that failed and were retried."""
    redirects: list[str] = field(default_factory=list)
    """The redirect targets followed to reach `url`, in order (`url` is the last)."""
    http_version: str = "1.1"
    reason: str = ""
    """The reason phrase of the status line (`OK`)."""
    request_headers: CIMultiDictProxy[str] | None = None
    """The headers sent with the last hop, as aiohttp sent them."""
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()
    """The response's headers as received: names in their case, in order."""


@final
@dataclass(slots=True, kw_only=True)
class Failed:
    """No usable response: the last error, after all retries."""

    error: FetchError
    attempts: int
    failures: list[ErrorRecord]


@final
@dataclass(slots=True, kw_only=True)
class Deferred:
    """The server asked for a long wait: fetch again at `not_before` (unix time)."""

    not_before: float
    attempts: int
    failures: list[ErrorRecord]


FetchOutcome = Fetched | Failed | Deferred


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a `Retry-After` header asks for (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone also takes '²' and other digits
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def failure_record(url: str, error: FetchError, attempt: int) -> ErrorRecord:
    """The error record of one failed attempt at `url`."""
    return ErrorRecord(
        url=url,
        kind=error.kind,
        message=error.message,
        attempt=attempt,
        callback=None,
        created_at=utc_now(),
    )
