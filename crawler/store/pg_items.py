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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, final

import asyncpg

from crawler.spider.base import Spider
from crawler.store.columns import ColumnKind, sql_literal
from crawler.store.item_registry import (
    ItemRegistry,
    Registered,
    declared_item_types,
)

if TYPE_CHECKING:
    from crawler.records import PageResult

__all__ = ["PgItemTables", "declare_pg_item_tables", "drop_pg_item_tables"]

_TYPES: Final = {
    ColumnKind.INTEGER: "bigint",
    ColumnKind.REAL: "double precision",
    ColumnKind.TEXT: "text",
    ColumnKind.JSON: "jsonb",
}


@dataclasses.dataclass(slots=True)
class _Object(Registered):
    view_types: dict[str, str] = dataclasses.field(default_factory=dict)
    """Views: column -> its type, from the JSON type of the key's first value."""


@final
class PgItemTables(ItemRegistry[asyncpg.Connection, _Object]):
    """The typed tables and views of one PostgreSQL crawl database, as one writer sees them
    (crawler.store.item_registry): a view takes its new keys from the batch's items."""

    ID_TYPE = "bigint PRIMARY KEY"
    META_TYPES = ("text NOT NULL", "bigint NOT NULL", "bigint NOT NULL", "text NOT NULL")

    def _entry(self, type_name: str, name: str) -> _Object:
        return _Object(type_name, name)

    def _column_type(self, kind: ColumnKind) -> str:
        return _TYPES[kind]

    async def _execute(self, conn: asyncpg.Connection, sql: str) -> None:
        await conn.execute(sql)

    async def _fetch(self, conn: asyncpg.Connection, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await conn.fetch(sql)]

    async def _copy(self, conn: asyncpg.Connection, table: _Object) -> None:
        await conn.execute(_insert_sql(table))

    async def _refresh_view(
        self, conn: asyncpg.Connection, type_name: str, results: Sequence[PageResult]
    ) -> None:
        """Add the keys seen in this batch's items (key -> column type, in the order first
        seen: jsonb keeps no key order) to the type's view."""
        seen = _keys_seen(results, type_name)
        view = self._views.get(type_name)
        if view is not None and view.knows(seen):
            return
        view, added = await self._add_view_keys(conn, type_name, seen)
        for key in added:
            view.view_types[view.columns[key]] = seen[key]
        await self._replace_view(conn, view)

    def _view_select(self, view: _Object) -> str:
        return view.select_sql(
            lambda key, column: _view_value(key, view.view_types.get(column, "text"))
        )

    async def _registered(self, conn: asyncpg.Connection) -> list[tuple[str, _Object]]:
        registered: list[tuple[str, _Object]] = []
        for type_name, kind, name, columns, json_columns in await self._fetch(conn, _REGISTERED):
            entry = _Object.decode(type_name, name, columns, json_columns)
            declared_types = await _column_types(conn, entry.name)
            entry.view_types = {column: declared for column, declared in declared_types}
            entry.kinds = {
                column: ColumnKind.JSON if column in entry.json_columns else _kind_of(declared)
                for column, declared in declared_types
            }
            registered.append((str(kind), entry))
        return registered

    async def _taken(self, conn: asyncpg.Connection, lowered: str) -> bool:
        if lowered.startswith(("pg_", "crawler_")):
            return True
        return bool(await conn.fetchval(_NAME_TAKEN, lowered))

    async def _register(
        self, conn: asyncpg.Connection, entry: _Object, values: Sequence[str]
    ) -> None:
        await conn.execute(
            "INSERT INTO item_tables (type, kind, name, columns, json_columns, last_item_id) "
            "VALUES ($1, $2, $3, $4::json, $5::json, 0) ON CONFLICT (type, kind) DO UPDATE "
            "SET name = excluded.name, columns = excluded.columns, "
            "json_columns = excluded.json_columns",
            *values,
        )


async def declare_pg_item_tables(conn: asyncpg.Connection, spider: Spider) -> None:
    """Create the tables of the spider's `item_types` (in the caller's transaction).

    Raises:
        SpiderError: an entry of `item_types` is not a dataclass.
    """
    await PgItemTables().declare(conn, declared_item_types(spider))


async def drop_pg_item_tables(conn: asyncpg.Connection) -> None:
    """Drop every registered item table and view (for `--fresh`), in the caller's transaction."""
    await PgItemTables().drop_all(conn)


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


def _insert_sql(table: _Object) -> str:
    def read(key: str, column: str) -> str:
        return _value(key, table.kinds.get(column, ColumnKind.TEXT))

    return table.copy_sql(read, sql_literal(table.type_name)) + " ORDER BY id"


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


_REGISTERED: Final = (
    "SELECT t.type, t.kind, t.name, t.columns::text, t.json_columns::text FROM item_tables AS t "
    "WHERE to_regclass(quote_ident(t.name)) IS NOT NULL"
)
_NAME_TAKEN: Final = (
    "SELECT EXISTS (SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND lower(c.relname) = $1) "
    "OR EXISTS (SELECT 1 FROM item_tables WHERE lower(name) = $1)"
)
