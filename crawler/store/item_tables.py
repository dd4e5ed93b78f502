"""Typed item tables: a table per dataclass item type, a view per dict item type.

Every item is stored in `items` (type name + JSON), so one query covers all items and the
counts agree. In the same transaction, the storage writer calls `ItemTables.write`, which
copies the batch's new `items` rows of each dataclass type into that type's table with one
`INSERT … SELECT json_extract(…)` per type, and recreates a dict type's view when new keys
appear. Copying from `items` rather than from the Python objects makes the typed rows exactly
the stored items: after validation, `process_item` and de-duplication.

Naming rules (also in docs/querying.md; the column helpers are in crawler.store.columns,
the bookkeeping SQLite and PostgreSQL share in crawler.store.item_registry):

- The table of item type `book` is `book`. A name already taken (a core table such as `items`,
  or any other table, view or index) gets the suffix `_items` (`items_items`), then `_items_2`…
- The view of dict item type `quote` is `quote_view` (then `quote_items_view`, …).
- Columns: `item_id` (= `items.id`), one per field or key, then `page_url`, `crawl_id`,
  `request_id`, `created_at`. A field or key whose name is taken (case-insensitively) gets
  `_2`, `_3`…; dict keys holding `"`, `\\` or control characters are not exposed (they stay in
  `items.data`), nor are keys beyond the first 500 of a type.
- Column types from the type hints: int/bool → INTEGER, float → REAL, str → TEXT, anything
  else (list, dict, unions, nested dataclasses) → TEXT holding JSON. A column's type is fixed
  when it is created; a field added to the dataclass adds a column (`ALTER TABLE … ADD COLUMN`).
  SQLite has no booleans, so a bool column holds 1 and 0, an `int | float` column is REAL and
  a string ends at a NUL: these columns are for SQL, and `crawler export` takes its values
  from `items.data` instead, where the item is kept exactly (see crawler.results.export).
- `item_tables` lists them all: type, kind (`table` | `view`), name, columns (JSON object:
  field or key → column) and json_columns (JSON array of the columns holding JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self, final

import aiosqlite

from crawler.spider.base import Spider
from crawler.store.columns import (
    META_TYPES,
    ColumnKind,
    json_path,
    sql_literal,
)
from crawler.store.item_registry import (
    ItemRegistry,
    Registered,
    declared_item_types,
)
from crawler.store.schema import rollback

if TYPE_CHECKING:
    from crawler.records import PageResult

__all__ = ["ItemTables", "declare_item_tables", "drop_item_tables"]


@dataclass(slots=True)
class _Object(Registered):
    """One registered table or view, with what SQLite's writer keeps of it."""

    last_item_id: int = 0
    """Views: `items.id` up to which keys have been looked for."""
    insert_sql: str = ""
    """Tables: copies this type's new `items` rows into the table."""

    def carry_over(self, cached: Self) -> None:
        self.skipped_keys = cached.skipped_keys
        self.last_item_id = max(self.last_item_id, cached.last_item_id)


@final
class ItemTables(ItemRegistry[aiosqlite.Connection, _Object]):
    """The typed tables and views of an SQLite file, as one writer sees them (crawler.store.
    item_registry): a view finds its new keys with `json_each` over the items added since it
    last looked."""

    ID_TYPE = "INTEGER PRIMARY KEY"
    META_TYPES = META_TYPES

    def ready_inserts(self, results: Sequence[PageResult]) -> list[str] | None:
        """The statements `write` would run for this batch, parameters inlined, when that is
        all it would do (every item type has its table, checked against its class); None
        when `write` has more to do (a new class, a dict type's view, the first batch)."""
        if not self._loaded:
            return None
        statements: list[str] = []
        type_names: set[str] = set()
        for result in results:
            if any(cls not in self._checked for cls in result.item_classes):
                return None
            type_names.update(type_name for type_name, _ in result.items)
        for type_name in sorted(type_names):
            if (table := self._tables.get(type_name)) is None:
                return None
            statements.append(_insert_sql(table, sql_literal(type_name)))
        return statements

    def _entry(self, type_name: str, name: str) -> _Object:
        return _Object(type_name, name)

    def _column_type(self, kind: ColumnKind) -> str:
        return kind.declared

    def _columns_changed(self, table: _Object) -> None:
        table.insert_sql = _insert_sql(table)

    async def _execute(self, conn: aiosqlite.Connection, sql: str) -> None:
        await conn.execute(sql)

    async def _fetch(self, conn: aiosqlite.Connection, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await conn.execute_fetchall(sql)]

    async def _copy(self, conn: aiosqlite.Connection, table: _Object) -> None:
        await conn.execute(table.insert_sql, (table.type_name,))

    async def _refresh_view(
        self, conn: aiosqlite.Connection, type_name: str, results: Sequence[PageResult]
    ) -> None:
        view = self._views.get(type_name)
        after = view.last_item_id if view is not None else 0
        async with conn.execute(_NEW_KEYS, (type_name, after)) as cursor:
            keys = [str(row[0]) for row in await cursor.fetchall()]
        async with conn.execute("SELECT coalesce(max(id), 0) FROM items") as cursor:
            row = await cursor.fetchone()
        last_item_id = int(row[0]) if row else 0
        if view is None or not view.knows(keys):
            view, _ = await self._add_view_keys(conn, type_name, keys)
            view.last_item_id = last_item_id
            await self._replace_view(conn, view)
        else:
            view.last_item_id = last_item_id

    def _view_select(self, view: _Object) -> str:
        return view.select_sql(lambda key, _: f"json_extract(data, {json_path(key)})")

    async def _registered(self, conn: aiosqlite.Connection) -> list[tuple[str, _Object]]:
        registered: list[tuple[str, _Object]] = []
        rows = await self._fetch(conn, _REGISTERED)
        for type_name, kind, name, columns, json_columns, last_item_id in rows:
            entry = _Object.decode(type_name, name, columns, json_columns)
            entry.last_item_id = int(last_item_id)
            if kind == "table":
                entry.insert_sql = _insert_sql(entry)
            registered.append((str(kind), entry))
        return registered

    async def _taken(self, conn: aiosqlite.Connection, lowered: str) -> bool:
        if lowered.startswith("sqlite_"):
            return True
        async with conn.execute(_NAME_TAKEN, (lowered, lowered)) as cursor:
            return await cursor.fetchone() is not None

    async def _register(
        self, conn: aiosqlite.Connection, entry: _Object, values: Sequence[str]
    ) -> None:
        await conn.execute(
            "INSERT OR REPLACE INTO item_tables "
            "(type, kind, name, columns, json_columns, last_item_id) VALUES (?, ?, ?, ?, ?, ?)",
            (*values, entry.last_item_id),
        )


async def declare_item_tables(
    conn: aiosqlite.Connection, spider: Spider, *, own_transaction: bool = True
) -> None:
    """Create the tables of the spider's `item_types` before the crawl starts (in a
    transaction of its own, or in the caller's with `own_transaction=False`).

    Raises:
        SpiderError: an entry of `item_types` is not a dataclass.
    """
    declared = declared_item_types(spider)
    if not declared:
        return
    if not own_transaction:
        await ItemTables().declare(conn, declared)
        return
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await ItemTables().declare(conn, declared)
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise


async def drop_item_tables(conn: aiosqlite.Connection) -> None:
    """Drop every registered item table and view (for `--fresh`); call inside a transaction."""
    await ItemTables().drop_all(conn)


def _insert_sql(table: _Object, type_value: str = "?") -> str:
    """INSERT … SELECT copying a type's items newer than the table's newest row (the type
    name a parameter, or `type_value` as an SQL literal)."""

    def read(key: str, column: str) -> str:
        extract = f"json_extract(data, {json_path(key)})"
        return f"nullif(json_quote({extract}), 'null')" if column in json_columns else extract

    json_columns = set(table.json_columns)
    return table.copy_sql(read, type_value)


_REGISTERED: Final = (
    "SELECT t.type, t.kind, t.name, t.columns, t.json_columns, t.last_item_id "
    "FROM item_tables AS t JOIN sqlite_master AS m ON m.name = t.name AND m.type = t.kind"
)
_NAME_TAKEN: Final = (
    "SELECT 1 FROM sqlite_master WHERE lower(name) = ? "
    "UNION ALL SELECT 1 FROM item_tables WHERE lower(name) = ?"
)
_NEW_KEYS: Final = (
    "SELECT j.key FROM items, json_each(items.data) AS j "
    "WHERE items.type = ? AND items.id > ? AND json_valid(items.data) "
    "GROUP BY j.key ORDER BY min(items.id), min(j.id)"
)
