"""Storing what a reparse's callbacks produced: one batch of pages' items (de-duplicated as
the crawl's writer does), item keys, typed-table rows, errors and item errors, written inside
the reparse's transaction by its one writer, the reparse's own process.

The batch comes in page order, whichever process parsed it, so items get their ids in the
order a single-process reparse gives them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, final

import aiosqlite

from crawler.engine.reparse_chunks import ItemFields
from crawler.records import DropReason, PageResult, utc_now
from crawler.store.item_registry import ItemRegistry
from crawler.store.item_tables import ItemTables

__all__ = ["ReparseRows", "RowWriter", "SqliteRowWriter", "Tally"]

Conn = TypeVar("Conn")


@final
@dataclass(slots=True)
class Tally:
    """What was stored, by type, and what was not, by reason."""

    items: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ReparseRows:
    """One batch's rows, in the columns of each table's INSERT."""

    items: list[tuple[object, ...]] = field(default_factory=list)
    keys: list[tuple[object, ...]] = field(default_factory=list)
    errors: list[tuple[object, ...]] = field(default_factory=list)
    item_errors: list[tuple[object, ...]] = field(default_factory=list)


class RowWriter(ABC, Generic[Conn]):
    """Writes batches of reparsed pages; remembers the item keys stored so far. The rows
    are the same on either database; `_insert` writes them with its driver."""

    def __init__(self, conn: Conn, tables: ItemRegistry[Conn, Any], tally: Tally) -> None:
        self._conn = conn
        self._tally = tally
        self._tables = tables
        self._seen_keys: set[tuple[str, int]] = set()
        self._declared: set[tuple[str, ItemFields]] = set()

    async def write(
        self, batch: Sequence[tuple[int, PageResult]], tables: Iterable[tuple[str, ItemFields]]
    ) -> None:
        """Write one batch of (crawl id, result) pairs, in that order; `tables` are the typed
        tables its items need, with their fields."""
        now = utc_now()
        rows = ReparseRows()
        for crawl_id, result in batch:
            self._add_items(rows, crawl_id, result, now)
            self._add_errors(rows, crawl_id, result, now)
        await self._insert(rows)
        for table in tables:
            if table not in self._declared:
                await self._tables.ensure_table(self._conn, *table)
                self._declared.add(table)
        await self._tables.write(self._conn, [result for _, result in batch])

    @abstractmethod
    async def _insert(self, rows: ReparseRows) -> None:
        """Insert one batch's rows: items (in order: their ids are the reparse's), item keys,
        errors and item errors."""

    def _add_items(self, rows: ReparseRows, crawl_id: int, result: PageResult, now: str) -> None:
        """Keep the page's items whose key no earlier item had; `result.items` keeps only those
        (the typed tables are written from it)."""
        kept: list[tuple[str, str]] = []
        seen_keys, tally = self._seen_keys, self._tally
        for index, (type_name, data) in enumerate(result.items):
            if (key := result.item_keys.get(index)) is not None:
                if (key.type, key.key_hash) in seen_keys:
                    tally.dropped[DropReason.DUPLICATE.value] += 1
                    continue
                seen_keys.add((key.type, key.key_hash))
                rows.keys.append(
                    (key.type, key.key_hash, key.key, crawl_id, now, result.request_id)
                )
            kept.append((type_name, data))
            rows.items.append((crawl_id, result.request_id, result.url, type_name, data, now))
            tally.items[type_name] += 1
        result.items = kept

    def _add_errors(self, rows: ReparseRows, crawl_id: int, result: PageResult, now: str) -> None:
        """Count the page's dropped items and errors, and add its error and item_error rows."""
        tally = self._tally
        tally.dropped.update(reason.value for reason in result.dropped)
        if result.item_errors:
            tally.dropped[DropReason.INVALID.value] += len(result.item_errors)
        request_id = result.request_id
        for e in result.errors:
            tally.errors[e.kind] += 1
            rows.errors.append(
                (crawl_id, request_id, e.url, e.kind, e.message, e.attempt, e.callback, now)
            )
        rows.item_errors.extend(
            (crawl_id, request_id, e.url, e.callback, e.item_type, e.field, e.message, e.data, now)
            for e in result.item_errors
        )


@final
class SqliteRowWriter(RowWriter[aiosqlite.Connection]):
    """A `RowWriter` for an SQLite file."""

    def __init__(self, conn: aiosqlite.Connection, tally: Tally) -> None:
        super().__init__(conn, ItemTables(), tally)

    async def _insert(self, rows: ReparseRows) -> None:
        conn = self._conn
        await conn.executemany(
            "INSERT INTO items (crawl_id, request_id, page_url, type, data, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows.items,
        )
        await conn.executemany(
            "INSERT OR IGNORE INTO item_keys (type, key_hash, key, crawl_id, created_at, "
            "request_id) VALUES (?, ?, ?, ?, ?, ?)",
            rows.keys,
        )
        await conn.executemany(
            "INSERT INTO errors (crawl_id, request_id, url, kind, message, attempt, callback, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows.errors,
        )
        await conn.executemany(
            "INSERT INTO item_errors (crawl_id, request_id, url, callback, item_type, field, "
            "message, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows.item_errors,
        )
