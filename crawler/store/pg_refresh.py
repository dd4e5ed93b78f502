"""Re-crawls on PostgreSQL (as crawler.store.refresh and crawler.store.history for SQLite):
which fetched requests are due again, what a re-fetch knows of the stored page, and moving
a replaced page's items to `item_history`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import asyncpg

from crawler.records import Claimed, Previous
from crawler.store.columns import quote_identifier

__all__ = [
    "pg_attach_previous",
    "pg_fetched_hosts",
    "pg_has_pages",
    "pg_requeue_due",
    "pg_retire_items",
]

_DUE: Final = (
    "state IN ('done', 'failed') AND finished_at < coalesce("
    "(SELECT c.cutoff FROM unnest($2::text[], $3::text[]) AS c (host, cutoff) "
    "WHERE c.host = requests.host), $1) "
    "AND (lastmod IS NULL OR lastmod > finished_at) "
    "AND id IN (SELECT request_id FROM pages)"
)
_REQUEUE: Final = (
    "UPDATE requests SET state = 'pending', reason = NULL, attempts = 0, not_before = NULL, "
    f"lease_owner = NULL, lease_expires = NULL WHERE {_DUE}"
)
_RETIRED: Final = "SELECT unnest($1::bigint[])"


async def pg_has_pages(conn: asyncpg.Connection) -> bool:
    """Whether the database holds any page: then a claimed request may be a re-fetch."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pages)"))


async def pg_fetched_hosts(conn: asyncpg.Connection) -> list[str]:
    """The hosts of the requests that were fetched."""
    rows = await conn.fetch(
        "SELECT DISTINCT host FROM requests WHERE state IN ('done', 'failed') ORDER BY host"
    )
    return [str(row[0]) for row in rows]


async def pg_requeue_due(
    conn: asyncpg.Connection, *, cutoff: str | None, host_cutoffs: Mapping[str, str]
) -> int:
    """Set the requests due for a re-fetch back to pending, in one transaction; return how
    many (see crawler.store.refresh.requeue_due)."""
    if cutoff is None and not host_cutoffs:
        return 0
    hosts = sorted(host_cutoffs)
    async with conn.transaction():
        status = await conn.execute(_REQUEUE, cutoff or "", hosts, [host_cutoffs[h] for h in hosts])
    return int(status.rsplit(" ", 1)[-1])


async def pg_attach_previous(conn: asyncpg.Connection, claimed: Sequence[Claimed]) -> None:
    """Set `previous` on the claimed requests that have a stored page (re-fetches)."""
    by_id = {c.id: c for c in claimed}
    rows = await conn.fetch(
        "SELECT request_id, etag, last_modified, body_hash FROM pages "
        "WHERE request_id = ANY($1::bigint[])",
        list(by_id),
    )
    for request_id, etag, last_modified, body_hash in rows:
        by_id[int(request_id)].previous = Previous(
            etag=etag, last_modified=last_modified, body_hash=body_hash
        )


async def pg_retire_items(
    conn: asyncpg.Connection,
    retired: Sequence[tuple[int, str]],
    *,
    run_id: int | None,
    now: str,
) -> None:
    """Move the items of the pages of requests `retired` ((request id, reason) pairs) to
    `item_history`, and delete them, their typed rows, their keys and their pages' links
    (see crawler.store.history.retire_items)."""
    if not retired:
        return
    ids = [request_id for request_id, _ in retired]
    await conn.execute(
        "INSERT INTO item_history (item_id, crawl_id, request_id, page_url, type, data, "
        "created_at, replaced_at, replaced_by, reason) "
        "SELECT i.id, i.crawl_id, i.request_id, i.page_url, i.type, i.data, i.created_at, "
        "$3, $4, r.reason FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY "
        "AS r (request_id, reason, n) JOIN items AS i ON i.request_id = r.request_id "
        "ORDER BY r.n, i.id",
        ids,
        [reason for _, reason in retired],
        now,
        run_id,
    )
    tables = await conn.fetch("SELECT name FROM item_tables WHERE kind = 'table'")
    for (table,) in tables:
        await conn.execute(
            f"DELETE FROM {quote_identifier(str(table))} WHERE item_id IN "
            f"(SELECT id FROM items WHERE request_id IN ({_RETIRED}))",
            ids,
        )
    await conn.execute(f"DELETE FROM item_keys WHERE request_id IN ({_RETIRED})", ids)
    await conn.execute(f"DELETE FROM items WHERE request_id IN ({_RETIRED})", ids)
    await conn.execute(
        f"DELETE FROM links WHERE page_id IN (SELECT id FROM pages WHERE request_id IN "
        f"({_RETIRED}))",
        ids,
    )
