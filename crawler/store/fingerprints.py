"""The set of request fingerprints in an SQLite file, in three levels, so that admitting a
batch costs about the same in a file of a million requests as in an empty one.

Why levels: fingerprints are 64-bit hashes, so new ones fall at random all over a sorted
index. A batch's ~2,000 new fingerprints in a unique index of 1,000,000 touched ~1,600 of
its ~4,600 leaf pages, and every page a transaction changes is written whole to the WAL at
COMMIT and again to the file at the next checkpoint: the commit of a batch cost five times
as much at 1,000,000 requests as in an empty file. So the set is a small LSM tree:

- `fingerprints_new` (fingerprint → request id) takes every new fingerprint. It holds at
  most a few batches' worth (`FLUSH_AT`, ~40 pages), so a batch's random inserts touch
  few pages, and those pages stay in the cache.
- `fingerprints_recent` (the same columns) takes the new level whole, in fingerprint order,
  every few batches (`FLUSH`): each of its pages is then written once for many entries.
- `fingerprints` holds all the others. A batch only reads it; it is written only by a merge,
  which moves the whole recent level into it in fingerprint order (`MERGE`).

All are rowid tables keyed by the fingerprint (`INTEGER PRIMARY KEY`), so a lookup is one
B-tree search and an entry is ~16 bytes. A fingerprint is in at most one level, and the
union of the levels is exactly the `fingerprint` column of `requests` (which keeps the
value for readers, without an index).

The database keeps the set, for every process writing the file and any statement: a
trigger before each insert into `requests` drops the row when its fingerprint is in any
level (`RAISE(IGNORE)`: what `INSERT OR IGNORE` did with a unique index, row by row, so
that two rows of one statement with the same fingerprint keep the first), and a trigger
after it adds the new fingerprint to `fingerprints_new`. The first trigger also makes the
one exception to "the first row stays": a pending request whose URL the file holds as
refused for depth reopens that row, as found this time (depth is the least at which a URL
was found). So admitting a request is one lookup in the set, whether it is new or known.
Other statements that update a row on conflict (a redirect's target, a sitemap's
`lastmod`) update the rows `request_id_of` finds, then insert
(crawler.store.statements). Every write happens inside the writer's `BEGIN IMMEDIATE`
transaction, so a check and the insert that follows it are atomic across the processes
sharing the file. No request is ever deleted but by a fresh start (`crawl --fresh`), which
empties the set with `requests` (`EMPTY`, crawler.store.runs).

The policy (`merges_due`): a batch flushes the new level when it holds `FLUSH_AT` entries,
and merges the recent level into the main one when the recent level holds at least
`MERGE_AT_LEAST` entries and at least `MERGE_FRACTION` of the main level's. A merge writes
every page of the main level once (its cost grows with the file), but it happens only after
the file grew by that fraction, so its cost per new fingerprint is constant: ~(1 +
1/fraction) entries written per entry added, at any size; a flush likewise writes the
recent level once per `FLUSH_AT` new entries. Both run at the end of a write batch's
transaction (`Storage._commit`): applied whole or not at all, a crash during one leaves the
levels as they were, and their time is part of the writer's. `fingerprint_levels` keeps the
sizes of the two large levels, so that the policy reads no table.

PostgreSQL files keep their unique index (crawler.store.pg_schema).
"""

from __future__ import annotations

from typing import Final

import aiosqlite

__all__ = [
    "EMPTY",
    "FLUSH",
    "FLUSH_AT",
    "MERGE",
    "MERGE_AT_LEAST",
    "MERGE_FRACTION",
    "merges_due",
    "request_id_of",
]

FLUSH_AT: Final = 8_192
"""Entries of the new level that a flush moves into the recent one (~40 pages: a few
write batches' new requests; 16,384 measured a little slower in both files, and 1.08-1.11
times as slow in a file of 1,000,000 as in an empty one, against 1.07-1.08)."""
MERGE_AT_LEAST: Final = 65_536
"""Fewest recent entries a merge moves (~300 pages): below it, merges of a small file would
come every few batches for no gain."""
MERGE_FRACTION: Final = 0.125
"""The recent level is merged once it holds this fraction of the main level's entries."""

FLUSH: Final = (
    "INSERT INTO fingerprints_recent (fingerprint, request_id) "
    "SELECT fingerprint, request_id FROM fingerprints_new ORDER BY fingerprint",
    "UPDATE fingerprint_levels SET recent = recent + changes()",
    "DELETE FROM fingerprints_new",  # no WHERE: SQLite frees the table's pages at once
)
"""Move the new level into the recent one, in fingerprint order (inside a transaction)."""
MERGE: Final = (
    "INSERT INTO fingerprints (fingerprint, request_id) "
    "SELECT fingerprint, request_id FROM fingerprints_recent ORDER BY fingerprint",
    "UPDATE fingerprint_levels SET merged = merged + changes(), recent = 0",
    "DELETE FROM fingerprints_recent",
)
"""Move the recent level into the main one, in fingerprint order (inside a transaction)."""
EMPTY: Final = (
    "DELETE FROM fingerprints",
    "DELETE FROM fingerprints_recent",
    "DELETE FROM fingerprints_new",
    "UPDATE fingerprint_levels SET merged = 0, recent = 0",
)
"""Empty the set (with every request, inside a transaction: a fresh start)."""

_LEVELS: Final = ("fingerprints_new", "fingerprints_recent", "fingerprints")
"""The levels, in the order a lookup asks them: a known fingerprint a crawl meets again is
most often a recent one."""
_SIZES: Final = (
    "SELECT (SELECT count(*) FROM fingerprints_new), recent, merged FROM fingerprint_levels"
)
"""The entries of each level; `count(*)` of a small table only reads its few pages'
headers, and the larger levels' counts are kept by `FLUSH` and `MERGE`."""


def request_id_of(fingerprint: str) -> str:
    """SQL for the id of the request whose fingerprint is the SQL expression `fingerprint`,
    or NULL: a lookup in each level until one has it."""
    lookups = ", ".join(
        f"(SELECT request_id FROM {level} WHERE fingerprint = {fingerprint})" for level in _LEVELS
    )
    return f"coalesce({lookups})"


async def merges_due(conn: aiosqlite.Connection) -> tuple[str, ...]:
    """The statements the next write batch should end with (`FLUSH`, `MERGE`, both or
    neither), as the policy above says of the levels' sizes now."""
    async with conn.execute(_SIZES) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return ()
    new, recent, merged = int(row[0]), int(row[1]), int(row[2])
    due: tuple[str, ...] = ()
    if new >= FLUSH_AT:
        due, recent = FLUSH, recent + new
    if recent >= MERGE_AT_LEAST and recent >= MERGE_FRACTION * merged:
        due += MERGE
    return due
