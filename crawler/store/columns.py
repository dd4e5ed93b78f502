"""The columns of typed item tables and views: the kind of column a field's type hint makes
(`ColumnKind`, `column_kind`), a dataclass's fields with theirs (`item_fields`), the columns
every table and view has besides its fields, and quoting and de-duplicating SQL names.

The naming and typing rules themselves are described in crawler.store.item_tables.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final, Literal

__all__ = [
    "ID_COLUMN",
    "META_COLUMNS",
    "META_TYPES",
    "ColumnKind",
    "column_kind",
    "item_fields",
    "json_path",
    "quote_identifier",
    "sql_literal",
    "unique_column",
]

ID_COLUMN: Final = "item_id"
META_COLUMNS: Final = ("page_url", "crawl_id", "request_id", "created_at")
"""Columns every item table and view has after its fields, copied from `items`."""
META_TYPES: Final = ("TEXT NOT NULL", "INTEGER NOT NULL", "INTEGER NOT NULL", "TEXT NOT NULL")


class ColumnKind(StrEnum):
    """What a field's type hint makes of its column; the value is the declared SQL type."""

    INTEGER = "INTEGER"
    REAL = "REAL"
    TEXT = "TEXT"
    JSON = "JSON"
    """Declared TEXT; holds the value as JSON text."""

    @property
    def declared(self) -> str:
        """The column type in CREATE TABLE (JSON columns have TEXT affinity)."""
        return "TEXT" if self is ColumnKind.JSON else self.value


def quote_identifier(name: str) -> str:
    """Return `name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    """Return `text` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def column_kind(hint: object) -> ColumnKind:
    """Return the column kind for a field's type hint: int/bool → INTEGER, float → REAL,
    str → TEXT (also through Optional, NewType, Annotated and one-type Literals), else JSON."""
    if isinstance(hint, str):
        return _kind_from_text(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return column_kind(typing.get_args(hint)[0])
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        kinds = {column_kind(member) for member in members}
        if len(kinds) == 1:
            return kinds.pop()
        return (
            ColumnKind.REAL if kinds == {ColumnKind.INTEGER, ColumnKind.REAL} else ColumnKind.JSON
        )
    if origin is Literal:
        return _kind_of_values(typing.get_args(hint))
    if (supertype := getattr(hint, "__supertype__", None)) is not None:  # typing.NewType
        return column_kind(supertype)
    if isinstance(hint, type) and origin is None:
        if issubclass(hint, int):  # bool and IntEnum included
            return ColumnKind.INTEGER
        if issubclass(hint, float):
            return ColumnKind.REAL
        if issubclass(hint, str):
            return ColumnKind.TEXT
    return ColumnKind.JSON


def _kind_of_values(values: Sequence[object]) -> ColumnKind:
    if values and all(isinstance(v, int) for v in values):
        return ColumnKind.INTEGER
    if values and all(isinstance(v, str) for v in values):
        return ColumnKind.TEXT
    return ColumnKind.JSON


def _kind_from_text(hint: str) -> ColumnKind:
    """Read an annotation that could not be resolved: `int`, `str | None`, `Optional[float]`."""
    text = hint.replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1]
    parts = [part for part in text.split("|") if part != "None"]
    names = {"int": ColumnKind.INTEGER, "bool": ColumnKind.INTEGER}
    names |= {"float": ColumnKind.REAL, "str": ColumnKind.TEXT}
    return names.get(parts[0], ColumnKind.JSON) if len(parts) == 1 else ColumnKind.JSON


@functools.cache
def item_fields(cls: type) -> tuple[tuple[str, ColumnKind], ...]:
    """Return a dataclass's fields with their column kinds (computed once per class)."""
    try:
        hints: dict[str, Any] = typing.get_type_hints(cls)
    except Exception:  # e.g. a name imported only under TYPE_CHECKING: read the text
        hints = {}
    return tuple(
        (spec.name, column_kind(hints.get(spec.name, spec.type)))
        for spec in dataclasses.fields(cls)
    )


def unique_column(name: str, taken: set[str]) -> str:
    """Return `name`, or `name_2`, `name_3`…: the first not in `taken` (lowercase names),
    and add it to `taken`."""
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate.lower())
    return candidate


def json_path(key: str) -> str:
    """Return the SQL literal of the JSON path to an object's `key`."""
    return sql_literal(f'$."{key}"')
