"""The SQL of re-crawls: which finished requests are due again, and what a re-fetch knows of
the page stored before (crawler.engine.recrawl decides when; this module only reads and
updates `requests` and `pages`).

A request is due when it was fetched (it has a `pages` row), is `done` or `failed`, finished
before its host's cutoff, and has no sitemap `<lastmod>` older than that finish: a URL a
sitemap dates is fetched again when the sitemap says it changed (`INSERT_REQUEST` re-queues
it), not by age. Re-queued requests keep their callback, meta, headers, depth and
`finished_at` (the time of the last fetch, until they finish again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import aiosqlite

from crawler.records import Claimed, Previous
from crawler.store.bulk import BulkStatement, select_in
from crawler.store.schema import rollback

__all__ = ["attach_previous", "fetched_hosts", "has_pages", "requeue_due"]

_DUE: Final = (
    "state IN ('done', 'failed') AND finished_at < {cutoff} "
    "AND (lastmod IS NULL OR lastmod > finished_at) "
    "AND id IN (SELECT request_id FROM pages)"
)
_REQUEUE: Final = (
    "UPDATE requests SET state = 'pending', reason = NULL, attempts = 0, not_before = NULL, "
    "lease_owner = NULL, lease_expires = NULL WHERE "
)
_HOST_CUTOFFS: Final = BulkStatement(
    "INSERT INTO temp.refresh_cutoffs (host, cutoff) SELECT {0}, {1} FROM {rows} ORDER BY {order}",
    2,
)
_PREVIOUS: Final = (
    "SELECT request_id, etag, last_modified, body_hash FROM pages WHERE request_id IN ({marks})"
)


async def has_pages(conn: aiosqlite.Connection) -> bool:
    """Whether the file holds any page: then a claimed request may be a re-fetch."""
    async with conn.execute("SELECT EXISTS (SELECT 1 FROM pages)") as cursor:
        row = await cursor.fetchone()
    return bool(row and row[0])


async def fetched_hosts(conn: aiosqlite.Connection) -> list[str]:
    """The hosts of the requests that were fetched (one scan of `requests`)."""
    async with conn.execute(
        "SELECT DISTINCT host FROM requests WHERE state IN ('done', 'failed') ORDER BY host"
    ) as cursor:
        return [str(row[0]) for row in await cursor.fetchall()]


async def requeue_due(
    conn: aiosqlite.Connection, *, cutoff: str | None, host_cutoffs: Mapping[str, str]
) -> int:
    """Set the requests due for a re-fetch back to pending, in one transaction; return how
    many.

    `cutoff` (UTC text, as `finished_at`): requests that finished before it are due (None:
    none, unless their host has a cutoff of its own in `host_cutoffs`).
    """
    if cutoff is None and not host_cutoffs:
        return 0
    params: list[object] = []
    if host_cutoffs:
        when = (
            "coalesce((SELECT c.cutoff FROM temp.refresh_cutoffs AS c "
            "WHERE c.host = requests.host), ?)"
        )
    else:
        when = "?"
    params.append(cutoff or "")
    await conn.execute("BEGIN IMMEDIATE")
    try:
        if host_cutoffs:
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS refresh_cutoffs "
                "(host TEXT PRIMARY KEY, cutoff TEXT NOT NULL)"
            )
            await conn.execute("DELETE FROM temp.refresh_cutoffs")
            await _HOST_CUTOFFS.run(conn, sorted(host_cutoffs.items()))
        cursor = await conn.execute(_REQUEUE + _DUE.format(cutoff=when), params)
        count = max(0, cursor.rowcount)
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise
    return count


async def attach_previous(conn: aiosqlite.Connection, claimed: Sequence[Claimed]) -> None:
    """Set `previous` on the claimed requests that have a stored page (re-fetches)."""
    by_id = {c.id: c for c in claimed}
    for row in await select_in(conn, _PREVIOUS, list(by_id)):
        request_id, etag, last_modified, body_hash = row
        by_id[int(request_id)].previous = Previous(
            etag=etag, last_modified=last_modified, body_hash=body_hash
        )
