"""Replacing a page's items: what a re-crawl does when a page changed (or is gone), and what
a reparse may do. The page's current rows move to `item_history` and leave `items`, the
typed item tables and `item_keys`, and its links leave `links`; the caller then stores what
the page yields now. So a plain `SELECT` on `items` or `book` sees the current state, and
`item_versions` (a view: `items` and `item_history`, with `valid_from` and `valid_to`) every
version.

Runs inside the caller's transaction, before the page's new rows are inserted. A reparse,
which replaces the items of every page with a stored body and leaves links alone, archives
them all with one statement (`ARCHIVE_REPARSED`, on either backend) and deletes them itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import aiosqlite

from crawler.store.bulk import BulkStatement
from crawler.store.columns import quote_identifier

__all__ = ["ARCHIVE_REPARSED", "archive_reparsed_items", "retire_items"]

_RETIRED: Final = "SELECT value FROM json_each(?)"
"""The request ids `retire_items` is given (a JSON array, as one parameter)."""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS items_request ON items (request_id)",
    "CREATE INDEX IF NOT EXISTS links_page ON links (page_id)",
)
"""Made by the first replacement, not by the schema: a crawl that never replaces a page
(most first crawls) does not maintain them for every item and link it stores."""
_ARCHIVE: Final = BulkStatement(
    "INSERT INTO item_history (item_id, crawl_id, request_id, page_url, type, data, "
    "created_at, replaced_at, replaced_by, reason) "
    "SELECT i.id, i.crawl_id, i.request_id, i.page_url, i.type, i.data, i.created_at, "
    "{2}, {3}, {1} FROM {rows} JOIN items AS i ON i.request_id = {0} ORDER BY {order}, i.id",
    4,
)


async def retire_items(
    conn: aiosqlite.Connection,
    retired: Sequence[tuple[int, str]],
    *,
    run_id: int | None,
    now: str,
) -> None:
    """Move the items of the pages of requests `retired` ((request id, reason) pairs; reason
    `changed`, `gone` or `reparse`) to `item_history`, and delete them, their typed rows,
    their de-duplication keys and their pages' links.

    `run_id` is the run that replaces them (`item_history.replaced_by`; None for a reparse).
    """
    if not retired:
        return
    for index in _INDEXES:
        await conn.execute(index)
    await _ARCHIVE.run(conn, [(request_id, reason, now, run_id) for request_id, reason in retired])
    ids = json.dumps([request_id for request_id, _ in retired])
    async with conn.execute("SELECT name FROM item_tables WHERE kind = 'table'") as cursor:
        tables = [str(row[0]) for row in await cursor.fetchall()]
    for table in tables:
        await conn.execute(
            f"DELETE FROM {quote_identifier(table)} WHERE item_id IN "
            f"(SELECT id FROM items WHERE request_id IN ({_RETIRED}))",
            (ids,),
        )
    await conn.execute(f"DELETE FROM item_keys WHERE request_id IN ({_RETIRED})", (ids,))
    await conn.execute(f"DELETE FROM items WHERE request_id IN ({_RETIRED})", (ids,))
    await conn.execute(
        f"DELETE FROM links WHERE page_id IN "
        f"(SELECT id FROM pages WHERE request_id IN ({_RETIRED}))",
        (ids,),
    )


ARCHIVE_REPARSED: Final = (
    "INSERT INTO item_history (item_id, crawl_id, request_id, page_url, type, data, "
    "created_at, replaced_at, replaced_by, reason) "
    "SELECT id, crawl_id, request_id, page_url, type, data, created_at, {now}, NULL, 'reparse' "
    "FROM items WHERE request_id IN (SELECT request_id FROM pages WHERE body IS NOT NULL) "
    "ORDER BY id"
)
"""Copies the items of every page with a stored body to `item_history` (reason `reparse`,
by no run), replaced at the one parameter `{now}`: its driver's placeholder (`?`, `$1`). The
statement of both backends (PostgreSQL's reparse runs it too), so that their histories agree."""


async def archive_reparsed_items(conn: aiosqlite.Connection, *, now: str) -> None:
    """Copy the items of every page with a stored body to `item_history` (reason `reparse`,
    replaced at `now`, by no run): a reparse is about to delete and replace them."""
    await conn.execute(ARCHIVE_REPARSED.format(now="?"), (now,))
