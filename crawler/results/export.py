"""Exporting the items of one type from a crawl database, streamed row by row.

A dataclass type's rows are those of its typed table (see crawler.store.item_tables), with the
table's columns, but each field's value is read from the stored item (`items.data`, the JSON
the spider's item was written as), not from its SQL column: SQLite has no booleans (a bool
column holds 1 and 0), an `int | float` column is REAL, and its JSON functions end a string
at a NUL. So what a spider yields is what JSON and JSON-lines exports give back, value and
JSON type alike: `True` stays `true`, `2.0` stays `2.0`, nested lists, dicts and dataclasses
stay nested, `None` is `null`. A typed row whose item is gone (a row written into the table
by hand) is exported from its columns, JSON columns decoded.

A dict type is read from `items`, one column per key. Rows come straight off the SQLite
cursor, so exporting a million rows holds one at a time.

CSV cells are text, so values are spelled out (`csv_cell`): a bool as `true` / `false`, a
list or dict (a nested dataclass is a dict) as compact JSON, a float as Python's shortest
round-trip repr (`2.0`, `1e+100`), an int in digits, None as an empty cell, a string as is.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from crawler.store.columns import ID_COLUMN, META_COLUMNS, quote_identifier, unique_column

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection

__all__ = ["ItemRows", "csv_cell", "item_rows", "known_item_types"]

Row = Sequence[object]


@final
@dataclass(frozen=True, slots=True)
class ItemRows:
    """The columns and the (lazy) rows of one item type."""

    source: str
    """Where the rows come from: the typed table, or `items`."""
    columns: list[str]
    rows: Iterator[Row]


def known_item_types(conn: ReadConnection) -> list[str]:
    """Return every item type in the database: typed tables' types and `items.type` values."""
    sql = (
        "SELECT type FROM item_tables WHERE kind = 'table' UNION SELECT DISTINCT type FROM items "
        "ORDER BY 1"
    )
    return [str(row[0]) for row in conn.execute(sql)]


def item_rows(conn: ReadConnection, type_name: str, *, decode_json: bool) -> ItemRows | None:
    """Return the rows of one item type, or None when the database has no such type.

    Args:
        conn: an open crawl database.
        type_name: the item type (`book`, or a spider's `item_type` for dict items).
        decode_json: give each field its JSON value (for JSON output); when false, give
            CSV cells (see `csv_cell`).
    """
    typed_table = _TYPED_TABLE if isinstance(conn, sqlite3.Connection) else _PG_TYPED_TABLE
    table = conn.execute(typed_table, (type_name,)).fetchone()
    if table is not None:
        name, columns, json_columns = str(table[0]), json.loads(table[1]), json.loads(table[2])
        return _table_rows(conn, type_name, name, columns, json_columns, as_json=decode_json)
    if conn.execute("SELECT 1 FROM items WHERE type = ? LIMIT 1", (type_name,)).fetchone():
        return _dict_rows(conn, type_name, as_json=decode_json)
    return None


def csv_cell(value: object) -> object:
    """A field's value as written in a CSV cell: bools as `true` / `false`, lists and dicts
    as compact JSON text; numbers, strings and None (an empty cell) as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return value


def _table_rows(
    conn: ReadConnection,
    type_name: str,
    name: str,
    field_columns: dict[str, str],
    json_columns: list[str],
    *,
    as_json: bool,
) -> ItemRows:
    """Rows of a typed table, each field's value taken from its item's stored JSON."""
    item_id = quote_identifier(ID_COLUMN)
    cursor = conn.execute(
        f"SELECT t.*, i.data FROM {quote_identifier(name)} AS t "
        f"LEFT JOIN items AS i ON i.id = t.{item_id} AND i.type = ? ORDER BY t.{item_id}",
        (type_name,),
    )
    assert cursor.description is not None  # a SELECT
    columns = [d[0] for d in cursor.description][:-1]  # the last one is `items.data`
    index = {column: i for i, column in enumerate(columns)}
    fields = [(index[column], key) for key, column in field_columns.items() if column in index]
    from_json = {index[column] for column in json_columns if column in index}

    def rows() -> Iterator[Row]:
        for *values, data in cursor:
            stored = _stored_object(data)
            for i, key in fields:
                if stored is not None and key in stored:
                    values[i] = stored[key]
                elif i in from_json and isinstance(values[i], str):
                    with contextlib.suppress(ValueError):  # a value written by hand stays
                        values[i] = json.loads(values[i])
                if not as_json:
                    values[i] = csv_cell(values[i])
            yield values

    return ItemRows(source=name, columns=columns, rows=rows())


def _stored_object(data: object) -> dict[str, object] | None:
    """`items.data` as a dict, or None when there is no item row or it holds no JSON object."""
    if not isinstance(data, str):
        return None
    try:
        values = json.loads(data)
    except ValueError:
        return None
    return values if isinstance(values, dict) else None


def _dict_rows(conn: ReadConnection, type_name: str, *, as_json: bool) -> ItemRows:
    """Rows of dict items: one column per key seen in any item of the type, in first-seen
    order, named as in the type's view."""
    keys = [str(row[0]) for row in conn.execute(_keys_sql(conn), (type_name,))]
    if not isinstance(conn, sqlite3.Connection):  # jsonb keeps no key order: the view's has it
        view = conn.execute(_PG_VIEW_KEYS, (type_name,)).fetchone()
        ordered = list(json.loads(view[0])) if view is not None else []
        keys = ordered + [key for key in keys if key not in ordered]
    taken = {c.lower() for c in (ID_COLUMN, *META_COLUMNS)}
    columns = [ID_COLUMN, *(unique_column(key, taken) for key in keys), *META_COLUMNS]
    cursor = conn.execute(_DICT_ITEMS, (type_name,))

    def rows() -> Iterator[Row]:
        for item_id, data, *meta in cursor:
            values = _stored_object(data) or {}
            picked = [values.get(key) for key in keys]
            if not as_json:
                picked = [csv_cell(value) for value in picked]
            yield [item_id, *picked, *meta]

    return ItemRows(source="items", columns=columns, rows=rows())


_TYPED_TABLE: Final = (
    "SELECT t.name, t.columns, t.json_columns FROM item_tables AS t "
    "JOIN sqlite_master AS m ON m.name = t.name AND m.type = 'table' "
    "WHERE t.type = ? AND t.kind = 'table'"
)
_PG_TYPED_TABLE: Final = (
    "SELECT t.name, t.columns::text, t.json_columns::text FROM item_tables AS t "
    "WHERE t.type = ? AND t.kind = 'table' AND to_regclass(quote_ident(t.name)) IS NOT NULL"
)
_PG_KEYS: Final = (
    "SELECT k FROM items, jsonb_object_keys(CASE jsonb_typeof(data) WHEN 'object' THEN data "
    "ELSE '{}'::jsonb END) AS k WHERE items.type = ? GROUP BY k ORDER BY min(items.id), k"
)
_PG_VIEW_KEYS: Final = "SELECT columns::text FROM item_tables WHERE type = ? AND kind = 'view'"
"""The same on PostgreSQL; jsonb keeps no key order, so the view's order comes first (the
keys as first seen, see crawler.store.pg_items)."""


def _keys_sql(conn: ReadConnection) -> str:
    return _KEYS if isinstance(conn, sqlite3.Connection) else _PG_KEYS


_KEYS: Final = (
    "SELECT j.key FROM items, json_each(items.data) AS j "
    "WHERE items.type = ? AND json_valid(items.data) "
    "GROUP BY j.key ORDER BY min(items.id), min(j.id)"
)
_DICT_ITEMS: Final = (
    "SELECT id, data, page_url, crawl_id, request_id, created_at FROM items "
    "WHERE type = ? ORDER BY id"
)
