"""Typed item tables: a table per dataclass item type, a view per dict item type.

Every item is stored in `items` (type name + JSON), so one query covers all items and the
counts agree. In the same transaction, the storage writer calls `ItemTables.write`, which
copies the batch's new `items` rows of each dataclass type into that type's table with one
`INSERT … SELECT json_extract(…)` per type, and recreates a dict type's view when new keys
appear. Copying from `items` rather than from the Python objects makes the typed rows exactly
the stored items: after validation, `process_item` and de-duplication.

Naming rules (also in docs/querying.md; the column helpers are in crawler.store.columns):

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

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

import aiosqlite

from crawler.errors import SpiderError
from crawler.spider.base import Spider, dataclass_type_name
from crawler.store.columns import (
    ID_COLUMN,
    META_COLUMNS,
    META_TYPES,
    ColumnKind,
    item_fields,
    json_path,
    quote_identifier,
    sql_literal,
    unique_column,
)
from crawler.store.schema import rollback

if TYPE_CHECKING:
    from crawler.records import PageResult

__all__ = ["RESERVED_NAMES", "ItemTables", "declare_item_tables", "drop_item_tables"]

logger = logging.getLogger(__name__)

RESERVED_NAMES: Final = frozenset({
    "crawls", "requests", "pages", "links", "items", "errors", "robots",
    "item_errors", "item_keys", "item_tables", "fetches", "item_history", "item_versions",
})  # fmt: skip
"""The crawler's own tables: an item type of one of these names gets a suffixed table."""

MAX_VIEW_KEYS: Final = 500
_UNSAFE_KEY: Final = re.compile(r'["\\\x00-\x1f]')


@dataclass(slots=True)
class _Object:
    """One registered table or view: where a type's rows are, and its columns."""

    type_name: str
    name: str
    columns: dict[str, str] = field(default_factory=dict)
    """Field or key → column, in column order."""
    json_columns: list[str] = field(default_factory=list)
    last_item_id: int = 0
    """Views: `items.id` up to which keys have been looked for."""
    insert_sql: str = ""
    """Tables: copies this type's new `items` rows into the table."""
    skipped_keys: set[str] = field(default_factory=set)


@final
class ItemTables:
    """The typed tables and views of one database, as one writer sees them.

    Create one per write connection; it caches each type's column mapping, so a batch costs
    one statement per item type, whatever its size.
    """

    def __init__(self) -> None:
        self._tables: dict[str, _Object] = {}
        self._views: dict[str, _Object] = {}
        self._checked: set[type] = set()
        self._loaded = False

    async def write(self, conn: aiosqlite.Connection, results: Sequence[PageResult]) -> None:
        """Copy the batch's new items into their tables and refresh the views of dict types.

        Call it inside the transaction, after the batch's `items` rows are inserted.
        """
        classes: dict[type, str] = {}
        type_names: set[str] = set()
        for result in results:
            classes.update(result.item_classes)
            type_names.update(type_name for type_name, _ in result.items)
        if not type_names:
            return
        await self._load(conn)
        for cls, type_name in classes.items():
            if cls not in self._checked:
                await self.ensure_table(conn, type_name, item_fields(cls))
                self._checked.add(cls)
        for type_name in sorted(type_names):
            if (table := self._tables.get(type_name)) is not None:
                await conn.execute(table.insert_sql, (type_name,))
            else:
                await self._refresh_view(conn, type_name)

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

    async def ensure_table(
        self,
        conn: aiosqlite.Connection,
        type_name: str,
        fields: Iterable[tuple[str, ColumnKind]],
    ) -> None:
        """Create the table of `type_name`, or add the columns it lacks for `fields`."""
        await self._load(conn)
        table = self._tables.get(type_name)
        created = table is None
        if table is None:
            name = await _free_name(conn, _names(type_name, ""))
            table = _Object(type_name, name)
        new = [(name, kind) for name, kind in fields if name not in table.columns]
        if not new and not created:
            return
        taken = {c.lower() for c in (ID_COLUMN, *META_COLUMNS, *table.columns.values())}
        added: list[tuple[str, ColumnKind]] = []
        for field_name, kind in new:
            column = unique_column(field_name, taken)
            table.columns[field_name] = column
            added.append((column, kind))
            if kind is ColumnKind.JSON:
                table.json_columns.append(column)
        quoted = quote_identifier(table.name)
        if created:
            definitions = [f"{quote_identifier(ID_COLUMN)} INTEGER PRIMARY KEY"]
            definitions += [f"{quote_identifier(c)} {k.declared}" for c, k in added]
            definitions += [
                f"{quote_identifier(c)} {t}" for c, t in zip(META_COLUMNS, META_TYPES, strict=True)
            ]
            await conn.execute(f"CREATE TABLE {quoted} (\n  " + ",\n  ".join(definitions) + "\n)")
        else:
            for column, kind in added:
                await conn.execute(
                    f"ALTER TABLE {quoted} ADD COLUMN {quote_identifier(column)} {kind.declared}"
                )
        table.insert_sql = _insert_sql(table)
        self._tables[type_name] = table
        await _register(conn, table, "table")

    async def _refresh_view(self, conn: aiosqlite.Connection, type_name: str) -> None:
        view = self._views.get(type_name)
        after = view.last_item_id if view is not None else 0
        async with conn.execute(_NEW_KEYS, (type_name, after)) as cursor:
            keys = [str(row[0]) for row in await cursor.fetchall()]
        async with conn.execute("SELECT coalesce(max(id), 0) FROM items") as cursor:
            row = await cursor.fetchone()
        last_item_id = int(row[0]) if row else 0
        known = view.columns.keys() | view.skipped_keys if view is not None else set()
        if view is not None and known.issuperset(keys):
            view.last_item_id = last_item_id
            return
        await self._load(conn, force=True)  # another process may have changed it
        view = self._views.get(type_name)
        if view is None:
            view = _Object(type_name, await _free_name(conn, _names(type_name, "_view")))
            self._views[type_name] = view
        taken = {c.lower() for c in (ID_COLUMN, *META_COLUMNS, *view.columns.values())}
        for key in keys:
            if key in view.columns or key in view.skipped_keys:
                continue
            if _UNSAFE_KEY.search(key) or len(view.columns) >= MAX_VIEW_KEYS:
                logger.warning("%s items: key %r is not a column of %s", type_name, key, view.name)
                view.skipped_keys.add(key)
                continue
            view.columns[key] = unique_column(key, taken)
        view.last_item_id = last_item_id
        quoted = quote_identifier(view.name)
        await conn.execute(f"DROP VIEW IF EXISTS {quoted}")
        await conn.execute(f"CREATE VIEW {quoted} AS {_view_select(view)}")
        await _register(conn, view, "view")

    async def _load(self, conn: aiosqlite.Connection, *, force: bool = False) -> None:
        """Read `item_tables` (once, or again when `force`), keeping objects that exist."""
        if self._loaded and not force:
            return
        self._loaded = True
        async with conn.execute(_REGISTERED) as cursor:
            rows = await cursor.fetchall()
        for type_name, kind, name, columns, json_columns, last_item_id in rows:
            known = self._tables if kind == "table" else self._views
            cached = known.get(type_name)
            if cached is not None and cached.name == name and not force:
                continue
            entry = _Object(str(type_name), str(name))
            entry.columns = {str(k): str(v) for k, v in json.loads(columns).items()}
            entry.json_columns = [str(c) for c in json.loads(json_columns)]
            entry.last_item_id = max(int(last_item_id), cached.last_item_id if cached else 0)
            entry.skipped_keys = cached.skipped_keys if cached else set()
            if kind == "table":
                entry.insert_sql = _insert_sql(entry)
            known[str(type_name)] = entry


async def declare_item_tables(
    conn: aiosqlite.Connection, spider: Spider, *, own_transaction: bool = True
) -> None:
    """Create the tables of the spider's `item_types` before the crawl starts (in a
    transaction of its own, or in the caller's with `own_transaction=False`).

    Raises:
        SpiderError: an entry of `item_types` is not a dataclass.
    """
    declared: list[type] = []
    for cls in list[object](type(spider).item_types):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise SpiderError(
                f"{type(spider).__name__}.item_types must list dataclasses, got {cls!r}"
            )
        declared.append(cls)
    if not declared:
        return
    tables = ItemTables()
    if not own_transaction:
        for cls in declared:
            await tables.ensure_table(conn, dataclass_type_name(cls), item_fields(cls))
        return
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for cls in declared:
            await tables.ensure_table(conn, dataclass_type_name(cls), item_fields(cls))
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise


async def drop_item_tables(conn: aiosqlite.Connection) -> None:
    """Drop every registered item table and view (for `--fresh`); call inside a transaction."""
    async with conn.execute("SELECT kind, name FROM item_tables ORDER BY kind DESC") as cursor:
        rows = await cursor.fetchall()
    for kind, name in rows:  # views first
        what = "VIEW" if kind == "view" else "TABLE"
        await conn.execute(f"DROP {what} IF EXISTS {quote_identifier(str(name))}")
    await conn.execute("DELETE FROM item_tables")


def _names(type_name: str, suffix: str) -> Iterable[str]:
    yield f"{type_name}{suffix}"
    yield f"{type_name}_items{suffix}"
    number = 2
    while True:
        yield f"{type_name}_items_{number}{suffix}"
        number += 1


async def _free_name(conn: aiosqlite.Connection, candidates: Iterable[str]) -> str:
    """Return the first candidate that is neither reserved nor the name of any object."""
    for name in candidates:
        lowered = name.lower()
        if lowered in RESERVED_NAMES or lowered.startswith("sqlite_"):
            continue
        async with conn.execute(
            "SELECT 1 FROM sqlite_master WHERE lower(name) = ? "
            "UNION ALL SELECT 1 FROM item_tables WHERE lower(name) = ?",
            (lowered, lowered),
        ) as cursor:
            if await cursor.fetchone() is None:
                return name
    raise AssertionError("unreachable: the candidates never end")


async def _register(conn: aiosqlite.Connection, entry: _Object, kind: str) -> None:
    await conn.execute(
        "INSERT OR REPLACE INTO item_tables "
        "(type, kind, name, columns, json_columns, last_item_id) VALUES (?, ?, ?, ?, ?, ?)",
        (
            entry.type_name,
            kind,
            entry.name,
            json.dumps(entry.columns, ensure_ascii=False),
            json.dumps(entry.json_columns, ensure_ascii=False),
            entry.last_item_id,
        ),
    )


def _insert_sql(table: _Object, type_value: str = "?") -> str:
    """INSERT … SELECT copying a type's items newer than the table's newest row (the type
    name a parameter, or `type_value` as an SQL literal)."""
    quoted = quote_identifier(table.name)
    json_columns = set(table.json_columns)
    targets = [ID_COLUMN, *table.columns.values(), *META_COLUMNS]
    values = ["id"]
    for key, column in table.columns.items():
        extract = f"json_extract(data, {json_path(key)})"
        values.append(
            f"nullif(json_quote({extract}), 'null')" if column in json_columns else extract
        )
    values += list(META_COLUMNS)
    return (
        f"INSERT INTO {quoted} ({', '.join(quote_identifier(c) for c in targets)}) "
        f"SELECT {', '.join(values)} FROM items WHERE type = {type_value} "
        f"AND id > (SELECT coalesce(max({quote_identifier(ID_COLUMN)}), 0) FROM {quoted})"
    )


def _view_select(view: _Object) -> str:
    columns = [f"id AS {quote_identifier(ID_COLUMN)}"]
    columns += [
        f"json_extract(data, {json_path(key)}) AS {quote_identifier(column)}"
        for key, column in view.columns.items()
    ]
    columns += list(META_COLUMNS)
    return f"SELECT {', '.join(columns)} FROM items WHERE type = {sql_literal(view.type_name)}"


_REGISTERED: Final = (
    "SELECT t.type, t.kind, t.name, t.columns, t.json_columns, t.last_item_id "
    "FROM item_tables AS t JOIN sqlite_master AS m ON m.name = t.name AND m.type = t.kind"
)
_NEW_KEYS: Final = (
    "SELECT j.key FROM items, json_each(items.data) AS j "
    "WHERE items.type = ? AND items.id > ? AND json_valid(items.data) "
    "GROUP BY j.key ORDER BY min(items.id), min(j.id)"
)
