"""Typed item tables and views on PostgreSQL, by the rules of crawler.store.item_tables (the
same names, columns and `item_tables` rows), in PostgreSQL's types: INTEGER fields are
`bigint` (a bool is 1 or 0, as in SQLite), REAL `double precision`, TEXT `text` and JSON
`jsonb`. A view's column has the type of its key's first value (a number `double
precision`, a boolean `boolean`, a string `text`, else `jsonb`; NULL for an item whose value
is of another type), and the columns come in the order the keys were first seen: jsonb keeps
no key order, so the writer reads it from the items it writes (`item_tables.columns` is
`json`, which keeps it).

Within a batch's transaction, `PgItemTables.write` copies the new `items` rows of each
dataclass type into its table with one `INSERT … SELECT`, and recreates a dict type's view
when new keys appear. Tables and views are found again from `item_tables` on every new
writer, so workers on other machines share them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, final

import asyncpg

from crawler.errors import SpiderError
from crawler.spider.base import Spider, dataclass_type_name
from crawler.store.columns import (
    ID_COLUMN,
    META_COLUMNS,
    ColumnKind,
    item_fields,
    quote_identifier,
    sql_literal,
    unique_column,
)
from crawler.store.item_tables import MAX_VIEW_KEYS, RESERVED_NAMES

if TYPE_CHECKING:
    from crawler.records import PageResult

__all__ = ["PgItemTables", "declare_pg_item_tables", "drop_pg_item_tables"]

logger = logging.getLogger(__name__)

_TYPES: Final = {
    ColumnKind.INTEGER: "bigint",
    ColumnKind.REAL: "double precision",
    ColumnKind.TEXT: "text",
    ColumnKind.JSON: "jsonb",
}
_META: Final = ("text NOT NULL", "bigint NOT NULL", "bigint NOT NULL", "text NOT NULL")


@dataclasses.dataclass(slots=True)
class _Object:
    type_name: str
    name: str
    kinds: dict[str, ColumnKind] = dataclasses.field(default_factory=dict)
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    json_columns: list[str] = dataclasses.field(default_factory=list)
    view_types: dict[str, str] = dataclasses.field(default_factory=dict)
    """Views: column -> its type, from the JSON type of the key's first value."""
    skipped_keys: set[str] = dataclasses.field(default_factory=set)


@final
class PgItemTables:
    """The typed tables and views of one PostgreSQL crawl database, as one writer sees them."""

    def __init__(self) -> None:
        self._tables: dict[str, _Object] = {}
        self._views: dict[str, _Object] = {}
        self._checked: set[type] = set()
        self._loaded = False

    async def write(self, conn: asyncpg.Connection, results: Sequence[PageResult]) -> None:
        """Copy the batch's new items into their tables; refresh the views of dict types."""
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
                await conn.execute(_insert_sql(table))
            else:
                await self._refresh_view(conn, type_name, _keys_seen(results, type_name))

    async def ensure_table(
        self, conn: asyncpg.Connection, type_name: str, fields: Iterable[tuple[str, ColumnKind]]
    ) -> None:
        """Create the table of `type_name`, or add the columns it lacks for `fields`."""
        await self._load(conn)
        table = self._tables.get(type_name)
        created = table is None
        if table is None:
            table = _Object(type_name, await _free_name(conn, type_name, ""))
        new = [(name, kind) for name, kind in fields if name not in table.columns]
        if not new and not created:
            return
        taken = {c.lower() for c in (ID_COLUMN, *META_COLUMNS, *table.columns.values())}
        quoted = quote_identifier(table.name)
        definitions: list[str] = []
        for field_name, kind in new:
            column = unique_column(field_name, taken)
            table.columns[field_name] = column
            table.kinds[column] = kind
            if kind is ColumnKind.JSON:
                table.json_columns.append(column)
            definitions.append(f"{quote_identifier(column)} {_TYPES[kind]}")
        if created:
            head = [f"{quote_identifier(ID_COLUMN)} bigint PRIMARY KEY"]
            tail = [f"{quote_identifier(c)} {t}" for c, t in zip(META_COLUMNS, _META, strict=True)]
            body = ",\n  ".join(head + definitions + tail)
            await conn.execute(f"CREATE TABLE {quoted} (\n  {body}\n)")
        else:
            for definition in definitions:
                await conn.execute(f"ALTER TABLE {quoted} ADD COLUMN {definition}")
        self._tables[type_name] = table
        await _register(conn, table, "table")

    async def _refresh_view(
        self, conn: asyncpg.Connection, type_name: str, seen: dict[str, str]
    ) -> None:
        """Add the keys `seen` in this batch's items (key -> column type, in the order first
        seen: jsonb keeps no key order) to the type's view."""
        view = self._views.get(type_name)
        if view is not None and (view.columns.keys() | view.skipped_keys).issuperset(seen):
            return
        await self._load(conn, force=True)  # another worker may have changed it
        view = self._views.get(type_name)
        if view is None:
            view = _Object(type_name, await _free_name(conn, type_name, "_view"))
            self._views[type_name] = view
        taken = {c.lower() for c in (ID_COLUMN, *META_COLUMNS, *view.columns.values())}
        for key, value_type in seen.items():
            if key in view.columns or key in view.skipped_keys:
                continue
            unsafe = any(ch in key for ch in '"\\') or any(ord(ch) < 32 for ch in key)
            if unsafe or len(view.columns) >= MAX_VIEW_KEYS:
                logger.warning("%s items: key %r is not a column of %s", type_name, key, view.name)
                view.skipped_keys.add(key)
                continue
            view.columns[key] = unique_column(key, taken)
            view.view_types[view.columns[key]] = value_type
        quoted = quote_identifier(view.name)
        await conn.execute(f"DROP VIEW IF EXISTS {quoted}")
        await conn.execute(f"CREATE VIEW {quoted} AS {_view_select(view)}")
        await _register(conn, view, "view")

    async def _load(self, conn: asyncpg.Connection, *, force: bool = False) -> None:
        if self._loaded and not force:
            return
        self._loaded = True
        for row in await conn.fetch(_REGISTERED):
            type_name, kind, name, columns, json_columns = row
            entry = _Object(str(type_name), str(name))
            entry.columns = {str(k): str(v) for k, v in json.loads(columns).items()}
            entry.json_columns = [str(c) for c in json.loads(json_columns)]
            cached = (self._tables if kind == "table" else self._views).get(entry.type_name)
            if cached is not None:
                entry.skipped_keys = cached.skipped_keys
            declared_types = await _column_types(conn, entry.name)
            entry.view_types = {column: declared for column, declared in declared_types}
            entry.kinds = {
                column: ColumnKind.JSON if column in entry.json_columns else _kind_of(declared)
                for column, declared in declared_types
            }
            (self._tables if kind == "table" else self._views)[entry.type_name] = entry


async def declare_pg_item_tables(conn: asyncpg.Connection, spider: Spider) -> None:
    """Create the tables of the spider's `item_types` (in the caller's transaction).

    Raises:
        SpiderError: an entry of `item_types` is not a dataclass.
    """
    tables = PgItemTables()
    for cls in list[object](type(spider).item_types):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise SpiderError(
                f"{type(spider).__name__}.item_types must list dataclasses, got {cls!r}"
            )
        await tables.ensure_table(conn, dataclass_type_name(cls), item_fields(cls))


async def drop_pg_item_tables(conn: asyncpg.Connection) -> None:
    """Drop every registered item table and view (for `--fresh`), in the caller's transaction."""
    for kind, name in await conn.fetch("SELECT kind, name FROM item_tables ORDER BY kind DESC"):
        what = "VIEW" if kind == "view" else "TABLE"
        await conn.execute(f"DROP {what} IF EXISTS {quote_identifier(str(name))}")
    await conn.execute("DELETE FROM item_tables")


def _kind_of(declared: str) -> ColumnKind:
    return {"bigint": ColumnKind.INTEGER, "double precision": ColumnKind.REAL}.get(
        declared, ColumnKind.TEXT
    )


async def _column_types(conn: asyncpg.Connection, name: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1",
        name,
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def _free_name(conn: asyncpg.Connection, type_name: str, suffix: str) -> str:
    candidates = [f"{type_name}{suffix}", f"{type_name}_items{suffix}"]
    number = 2
    while True:
        for name in candidates:
            lowered = name.lower()
            if lowered in RESERVED_NAMES or lowered in {"frontier_counts", "hosts"}:
                continue
            if lowered.startswith(("pg_", "crawler_")):
                continue
            taken = await conn.fetchval(_NAME_TAKEN, lowered)
            if not taken:
                return name
        candidates = [f"{type_name}_items_{number}{suffix}"]
        number += 1


async def _register(conn: asyncpg.Connection, entry: _Object, kind: str) -> None:
    await conn.execute(
        "INSERT INTO item_tables (type, kind, name, columns, json_columns, last_item_id) "
        "VALUES ($1, $2, $3, $4::json, $5::json, 0) ON CONFLICT (type, kind) DO UPDATE SET "
        "name = excluded.name, columns = excluded.columns, json_columns = excluded.json_columns",
        entry.type_name,
        kind,
        entry.name,
        json.dumps(entry.columns, ensure_ascii=False),
        json.dumps(entry.json_columns, ensure_ascii=False),
    )


def _value(key: str, kind: ColumnKind) -> str:
    """The SQL reading field `key` of `items.data` as a column of `kind`."""
    value = f"(data -> {sql_literal(key)})"
    if kind is ColumnKind.JSON:
        return f"nullif({value}, 'null'::jsonb)"
    if kind is ColumnKind.TEXT:
        return f"(data ->> {sql_literal(key)})"
    number = f"CASE jsonb_typeof({value}) WHEN 'number' THEN ({value})::text::numeric "
    number += f"WHEN 'boolean' THEN ({value})::text::boolean::int END"
    if kind is ColumnKind.INTEGER:
        return f"({number})::bigint"
    return f"({number})::double precision"


def _insert_sql(table: _Object) -> str:
    quoted = quote_identifier(table.name)
    targets = [ID_COLUMN, *table.columns.values(), *META_COLUMNS]
    values = ["id"]
    for key, column in table.columns.items():
        values.append(_value(key, table.kinds.get(column, ColumnKind.TEXT)))
    values += list(META_COLUMNS)
    return (
        f"INSERT INTO {quoted} ({', '.join(quote_identifier(c) for c in targets)}) "
        f"SELECT {', '.join(values)} FROM items WHERE type = {sql_literal(table.type_name)} "
        f"AND id > (SELECT coalesce(max({quote_identifier(ID_COLUMN)}), 0) FROM {quoted}) "
        "ORDER BY id"
    )


def _keys_seen(results: Sequence[PageResult], type_name: str) -> dict[str, str]:
    """The keys of the batch's items of `type_name`, first seen first, each with the column
    type its first value asks for (number, boolean, text, else jsonb)."""
    seen: dict[str, str] = {}
    for result in results:
        for item_type, data in result.items:
            if item_type != type_name:
                continue
            try:
                values = json.loads(data)
            except ValueError:
                continue
            if isinstance(values, dict):
                for key, value in values.items():
                    seen.setdefault(str(key), _json_type(value))
    return seen


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "double precision"
    return "text" if isinstance(value, str) else "jsonb"


def _view_value(key: str, column_type: str) -> str:
    """The SQL reading `key` of `items.data` as a view column of `column_type` (NULL where
    an item's value is of another JSON type)."""
    value = f"(data -> {sql_literal(key)})"
    if column_type == "text":
        return f"(data ->> {sql_literal(key)})"
    if column_type == "jsonb":
        return value
    json_type = "boolean" if column_type == "boolean" else "number"
    return (
        f"CASE WHEN jsonb_typeof({value}) = '{json_type}' THEN ({value})::text::{column_type} END"
    )


def _view_select(view: _Object) -> str:
    columns = [f"id AS {quote_identifier(ID_COLUMN)}"]
    columns += [
        f"{_view_value(key, view.view_types.get(column, 'text'))} AS {quote_identifier(column)}"
        for key, column in view.columns.items()
    ]
    columns += list(META_COLUMNS)
    return f"SELECT {', '.join(columns)} FROM items WHERE type = {sql_literal(view.type_name)}"


_REGISTERED: Final = (
    "SELECT t.type, t.kind, t.name, t.columns::text, t.json_columns::text FROM item_tables AS t "
    "WHERE to_regclass(quote_ident(t.name)) IS NOT NULL"
)
_NAME_TAKEN: Final = (
    "SELECT EXISTS (SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND lower(c.relname) = $1) "
    "OR EXISTS (SELECT 1 FROM item_tables WHERE lower(name) = $1)"
)
