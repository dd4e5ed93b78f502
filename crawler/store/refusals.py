"""How the writer finds and records a row the database refuses.

One row that SQLite or encoding cannot take (an integer past 64 bits, text it cannot hold, a
value our statements did not foresee) must not stop the crawl: the writer
(crawler.store.writer) commits through `commit_or_split`, which splits a refused batch and
commits each half alone, down to the one result or discovered request that is refused, and
records that as its request's `internal` failure (crawler.failures). A failure of the
database itself (disk full, read-only, locked, corrupt) is raised at once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from crawler.errors import SkipReason, StorageError
from crawler.failures import describe, internal_error, internal_failure, storable
from crawler.records import Candidate, Claimed, ErrorRecord, PageResult, Skipped
from crawler.spider.http import Request
from crawler.store.rows import Seeds
from crawler.store.schema import is_database_fault

__all__ = ["Commit", "commit_or_split"]

logger = logging.getLogger(__name__)

Commit: TypeAlias = Callable[[Sequence[PageResult | Seeds]], Awaitable[None]]
"""Writes a batch in one transaction, leaving the writer as it was if that fails."""


async def commit_or_split(writes: Sequence[PageResult | Seeds], commit: Commit) -> None:
    """Commit `writes`; when their content is refused, find the refused rows by halving.

    Raises:
        sqlite3.Error: the database refused a write for a reason no row's content explains.
        StorageError: even the failure record of one refused result could not be written.
    """
    try:
        await commit(writes)
    except sqlite3.Error as exc:
        if is_database_fault(exc):
            raise
        await _split(writes, exc, commit)
    except (ValueError, TypeError, OverflowError, UnicodeError, KeyError) as exc:
        await _split(writes, exc, commit)


async def _split(writes: Sequence[PageResult | Seeds], exc: Exception, commit: Commit) -> None:
    if len(writes) > 1:
        middle = len(writes) // 2
        await commit_or_split(writes[:middle], commit)
        await commit_or_split(writes[middle:], commit)
        return
    (refused,) = writes
    if isinstance(refused, Seeds) and _seed_rows(refused) > 1:
        first, second = _halves(refused)
        await commit_or_split([first], commit)
        await commit_or_split([second], commit)
        return
    if isinstance(refused, PageResult) and (refused.candidates or refused.skipped):
        # The refused row may be one of the requests it found: record those on their
        # own (each refused one as skipped `internal`), then the page without them.
        found = Seeds(candidates=refused.candidates, skipped=refused.skipped)
        refused.candidates, refused.skipped = [], []
        await commit_or_split([found], commit)
        await commit_or_split([refused], commit)
        return
    replacement = _refused_record(refused, exc)
    logger.warning(
        "the database refused the results of %s: %s (recorded as an internal error)",
        replacement.errors[0].url,
        describe(exc),
    )
    try:
        await commit([replacement])
    except Exception as again:
        raise StorageError(f"database write failed: {describe(again)}") from again


def _seed_rows(seeds: Seeds) -> int:
    return len(seeds.candidates) + len(seeds.skipped) + len(seeds.errors)


def _halves(seeds: Seeds) -> tuple[Seeds, Seeds]:
    """Two messages holding the rows of `seeds` (its waiter stays with the original)."""
    rows: list[Candidate | Skipped | ErrorRecord] = [*seeds.candidates, *seeds.skipped]
    rows.extend(seeds.errors)
    middle = len(rows) // 2
    halves = (Seeds(), Seeds())
    for index, row in enumerate(rows):
        half = halves[index >= middle]
        if isinstance(row, Candidate):
            half.candidates.append(row)
        elif isinstance(row, Skipped):
            half.skipped.append(row)
        else:
            half.errors.append(row)
    return halves


def _refused_record(refused: PageResult | Seeds, exc: Exception) -> PageResult | Seeds:
    """What is written instead of a result (or a single discovered request) the database
    refused: its request failed with an `internal` error, nothing else of it kept."""
    if isinstance(refused, PageResult):
        claimed = Claimed(id=refused.request_id, request=Request(refused.url), attempts=0)
        return internal_failure(claimed, exc, attempts=refused.attempts)
    found: list[Candidate | Skipped | ErrorRecord] = [*refused.candidates, *refused.skipped]
    found.extend(refused.errors)
    (row,) = found
    error = internal_error(row.url, exc, attempt=0, callback=None)
    if not isinstance(row, Candidate):
        return Seeds(errors=[error])
    skipped = Skipped(
        url=error.url,
        fingerprint=row.fingerprint,
        host=storable(row.host)[0],
        reason=SkipReason.INTERNAL,
        depth=min(max(row.request.depth, 0), 2**31),
        parent_id=row.parent_id,
    )
    return Seeds(skipped=[skipped], errors=[error])
