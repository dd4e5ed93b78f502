"""Unexpected exceptions turned into recorded outcomes, and text made storable.

The crawl has two error boundaries. The per-request one (`Crawl._work`) turns any exception
raised while one request is fetched, decoded, parsed, handed to its callback or turned into
records into that request's outcome: state `failed`, reason `internal: <class>: <message>`,
and an `errors` row of kind `internal` holding the traceback. The writer's one
(`Storage`) does the same for a result that SQLite or encoding refuses to store. Only the
engine's own invariants (the writer, the database) may stop a crawl.

SQLite stores text as UTF-8, which cannot hold a lone surrogate (`'\\ud800'`, which Python
strings may contain). `storable()` replaces each with U+FFFD, visibly, and says how many.
"""

from __future__ import annotations

import re
import traceback
from typing import Final

from crawler.records import Claimed, ErrorRecord, PageResult, RequestState, utc_now

__all__ = [
    "INTERNAL",
    "describe",
    "internal_error",
    "internal_failure",
    "storable",
]

INTERNAL: Final = "internal"
"""The error kind of a failure inside the crawler or its libraries, not the server's or the
spider's: what the per-request and the writer's error boundaries record."""

_MESSAGE_LIMIT: Final = 8000
_REASON_LIMIT: Final = 500
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def storable(text: str) -> tuple[str, int]:
    """Return `text` with every lone surrogate replaced by U+FFFD, and how many were replaced.

    Cheap for the common case: ASCII text is recognised without a scan.
    """
    if text.isascii():
        return text, 0
    return _SURROGATE.subn("\ufffd", text)


def describe(exc: BaseException) -> str:
    """`Class: message` of an exception, as stored in `requests.reason` (storable text)."""
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return storable(message)[0]


def internal_error(
    url: str, exc: BaseException, *, attempt: int, callback: str | None
) -> ErrorRecord:
    """An `errors` row of kind `internal`: the exception and its traceback."""
    trace = "".join(traceback.format_exception(exc))
    text = storable(f"{describe(exc)}\n\n{trace}")[0]
    if len(text) > _MESSAGE_LIMIT:  # keep the start (what) and the end (where it was raised)
        half = _MESSAGE_LIMIT // 2
        text = f"{text[:half]}\n…\n{text[-half:]}"
    return ErrorRecord(
        url=storable(url)[0],
        kind=INTERNAL,
        message=text,
        attempt=attempt,
        callback=callback,
        created_at=utc_now(),
    )


def internal_failure(claimed: Claimed, exc: BaseException, *, attempts: int) -> PageResult:
    """The outcome of a request whose handling raised `exc`: failed, nothing else kept (what
    was gathered before the exception may be incomplete)."""
    request = claimed.request
    return PageResult(
        request_id=claimed.id,
        url=storable(request.url)[0],
        state=RequestState.FAILED,
        reason=f"{INTERNAL}: {describe(exc)}"[:_REASON_LIMIT],
        attempts=attempts,
        errors=[internal_error(request.url, exc, attempt=attempts, callback=request.callback)],
    )
