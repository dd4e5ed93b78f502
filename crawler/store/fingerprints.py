"""The set of request fingerprints in an SQLite file, in two levels, so that admitting a
batch costs about the same in a file of a million requests as in an empty one.

Why two levels: fingerprints are 64-bit hashes, so new ones fall at random all over a
sorted index. A batch's ~2,000 new fingerprints in a unique index of 1,000,000 touched
~1,600 of its ~4,600 leaf pages, and every page a transaction changes is written whole to
the WAL at COMMIT and again to the file at the next checkpoint: the commit of a batch cost
five times as much at 1,000,000 requests as in an empty file. So the set is a small LSM:

- `fingerprints_recent` (fingerprint → request id) takes every new fingerprint. It is kept
  small, so a batch's random inserts touch few pages, and those pages stay in the cache.
- `fingerprints` (the same columns) holds all the others. A batch only reads it; it is
  written only by a merge, which moves the whole recent level into it in fingerprint
  order (`MERGE`): each of its leaf pages is then written once for many new entries, in
  sequence, instead of once per batch for two or three.

Both are rowid tables keyed by the fingerprint (`INTEGER PRIMARY KEY`), so a lookup is one
B-tree search and an entry is ~16 bytes. A fingerprint is in at most one level, and the
union of the levels is exactly the `fingerprint` column of `requests` (which keeps the
value for readers, without an index).

The database keeps the set, for every process writing the file and any statement: a
trigger before each insert into `requests` drops the row when its fingerprint is already
in either level (`RAISE(IGNORE)`: what `INSERT OR IGNORE` did with the unique index, row by
row, so that two rows of one statement with the same fingerprint keep the first), and a
trigger after it adds the new fingerprint to `fingerprints_recent`. Statements that
updated a row on conflict (a URL refused for depth found again at a shallower depth, a
redirect's target) update the rows the set finds first, then insert
(crawler.store.statements). Every write happens inside the writer's `BEGIN IMMEDIATE`
transaction, so a check and the insert that follows it are atomic across the processes
sharing the file. No request is ever deleted but by a fresh start (`crawl --fresh`), which
empties the set with `requests` (crawler.store.runs).

The merge policy: a batch merges when the recent level holds at least `MERGE_AT_LEAST`
entries and at least `MERGE_FRACTION` of the main level's. A merge writes every page of
the main level once (its cost grows with the file), but it happens only after the file
grew by that fraction, so its cost per new fingerprint is constant: ~(1 + 1/fraction)
entries written per entry added, at any size. The recent level, between merges, is at
most `MERGE_AT_LEAST` entries (a few hundred pages) until the main level passes
`MERGE_AT_LEAST / MERGE_FRACTION` entries, and grows with it after that; a batch touches
at most one recent page per new fingerprint, so its share stays below the batch's own
size. The merge runs inside a write batch's transaction (`Storage._commit`): it is applied
whole or not at all, a crash during it leaves both levels as they were, and its time is
part of the writer's.

PostgreSQL files keep their unique index (crawler.store.pg_schema).
"""

from __future__ import annotations

from typing import Final

import aiosqlite

__all__ = [
    "MERGE",
    "MERGE_AT_LEAST",
    "MERGE_FRACTION",
    "merge_due",
    "request_id_of",
]

MERGE_AT_LEAST: Final = 65_536
"""Fewest recent entries a merge moves (~300 pages): below it, merges of a small file would
come every few batches for no gain."""
MERGE_FRACTION: Final = 0.125
"""The recent level is merged once it holds this fraction of the main level's entries."""

MERGE: Final = (
    "INSERT INTO fingerprints (fingerprint, request_id) "
    "SELECT fingerprint, request_id FROM fingerprints_recent ORDER BY fingerprint",
    "DELETE FROM fingerprints_recent",  # no WHERE: SQLite frees the table's pages at once
    "UPDATE fingerprint_levels SET merged = merged + changes()",
)
"""Move the recent level into the main one, in fingerprint order (inside a transaction)."""

_SIZES: Final = (
    "SELECT (SELECT count(*) FROM fingerprints_recent), (SELECT merged FROM fingerprint_levels)"
)
"""The entries of each level; `count(*)` of a table only reads its pages' headers, and the
recent level is small, while the main level's count is kept by `MERGE`."""


def request_id_of(fingerprint: str) -> str:
    """SQL for the id of the request whose fingerprint is the SQL expression `fingerprint`,
    or NULL: a lookup in each level (the recent one first: a known fingerprint a crawl meets
    again is most often a recent one)."""
    return (
        f"coalesce((SELECT request_id FROM fingerprints_recent WHERE fingerprint = {fingerprint}), "
        f"(SELECT request_id FROM fingerprints WHERE fingerprint = {fingerprint}))"
    )


async def merge_due(conn: aiosqlite.Connection) -> bool:
    """Whether the next write batch should merge the recent level (see the policy above)."""
    async with conn.execute(_SIZES) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return False
    recent, merged = int(row[0]), int(row[1])
    return recent >= MERGE_AT_LEAST and recent >= MERGE_FRACTION * merged
