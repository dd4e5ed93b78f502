"""Exporting the items of one type from a crawl database, streamed row by row.

A dataclass type is read from its typed table (see crawler.item_tables); a dict type from
`items`, one column per key. Rows come straight off the SQLite cursor, so exporting a
million rows holds one at a time. In JSON output, columns holding JSON text (lists, dicts)
are decoded, so a `tags` list comes out as a list rather than a string.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, final

from crawler.item_tables import ID_COLUMN, META_COLUMNS, quote_identifier, unique_column

__all__ = ["ItemRows", "item_rows", "known_item_types"]

Row = Sequence[object]


@final
@dataclass(frozen=True, slots=True)
class ItemRows:
    """The columns and the (lazy) rows of one item type."""

    source: str
    """Where the rows come from: the typed table, or `items`."""
    columns: list[str]
    rows: Iterator[Row]


def known_item_types(conn: sqlite3.Connection) -> list[str]:
    """Return every item type in the database: typed tables' types and `items.type` values."""
    sql = (
        "SELECT type FROM item_tables WHERE kind = 'table' UNION SELECT DISTINCT type FROM items "
        "ORDER BY 1"
    )
    return [str(row[0]) for row in conn.execute(sql)]


def item_rows(conn: sqlite3.Connection, type_name: str, *, decode_json: bool) -> ItemRows | None:
    """Return the rows of one item type, or None when the database has no such type.

    Args:
        conn: an open crawl database.
        type_name: the item type (`book`, or a spider's `item_type` for dict items).
        decode_json: turn JSON text columns into lists and dicts (for JSON output); when
            false, nested values of dict items are written as JSON text (for CSV).
    """
    table = conn.execute(_TYPED_TABLE, (type_name,)).fetchone()
    if table is not None:
        return _table_rows(conn, str(table[0]), json.loads(table[1]), decode_json=decode_json)
    if conn.execute("SELECT 1 FROM items WHERE type = ? LIMIT 1", (type_name,)).fetchone():
        return _dict_rows(conn, type_name, decode_json=decode_json)
    return None


def _table_rows(
    conn: sqlite3.Connection, name: str, json_columns: list[str], *, decode_json: bool
) -> ItemRows:
    cursor = conn.execute(
        f"SELECT * FROM {quote_identifier(name)} ORDER BY {quote_identifier(ID_COLUMN)}"
    )
    columns = [d[0] for d in cursor.description]
    decoded = [i for i, c in enumerate(columns) if c in json_columns] if decode_json else []
    rows: Iterator[Row] = cursor
    if decoded:
        rows = (_decode(row, decoded) for row in cursor)
    return ItemRows(source=name, columns=columns, rows=rows)


def _decode(row: Row, indexes: list[int]) -> Row:
    values = list(row)
    for i in indexes:
        if isinstance(values[i], str):
            with contextlib.suppress(ValueError):  # a value written by hand stays as it is
                values[i] = json.loads(values[i])  # type: ignore[arg-type]
    return values


def _dict_rows(conn: sqlite3.Connection, type_name: str, *, decode_json: bool) -> ItemRows:
    """Rows of dict items: one column per key seen in any item of the type, in first-seen
    order, named as in the type's view."""
    keys = [str(row[0]) for row in conn.execute(_KEYS, (type_name,))]
    taken = {c.lower() for c in (ID_COLUMN, *META_COLUMNS)}
    columns = [ID_COLUMN, *(unique_column(key, taken) for key in keys), *META_COLUMNS]
    cursor = conn.execute(_DICT_ITEMS, (type_name,))

    def rows() -> Iterator[Row]:
        for item_id, data, *meta in cursor:
            try:
                values = json.loads(data)
            except ValueError:
                values = None
            if not isinstance(values, dict):
                values = {}
            picked = [values.get(key) for key in keys]
            if not decode_json:
                picked = [_as_text(value) for value in picked]
            yield [item_id, *picked, *meta]

    return ItemRows(source="items", columns=columns, rows=rows())


def _as_text(value: object) -> object:
    if isinstance(value, list | dict | bool):
        return json.dumps(value, ensure_ascii=False)
    return value


_TYPED_TABLE: Final = (
    "SELECT t.name, t.json_columns FROM item_tables AS t "
    "JOIN sqlite_master AS m ON m.name = t.name AND m.type = 'table' "
    "WHERE t.type = ? AND t.kind = 'table'"
)
_KEYS: Final = (
    "SELECT j.key FROM items, json_each(items.data) AS j "
    "WHERE items.type = ? AND json_valid(items.data) "
    "GROUP BY j.key ORDER BY min(items.id), min(j.id)"
)
_DICT_ITEMS: Final = (
    "SELECT id, data, page_url, crawl_id, request_id, created_at FROM items "
    "WHERE type = ? ORDER BY id"
)
