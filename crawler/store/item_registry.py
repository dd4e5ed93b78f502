"""Typed item tables and views, whichever database holds them: what a batch writes and in
which order, the column and name bookkeeping, and the shape of the SQL that fills them.

`ItemRegistry` is the writer's side (one per write connection): crawler.store.item_tables
makes it SQLite's `ItemTables`, crawler.store.pg_items PostgreSQL's `PgItemTables`; each
says only what differs (column types, how a field is read out of `items.data`, how a view
finds its keys, the driver's calls). The naming rules are in crawler.store.item_tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

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

if TYPE_CHECKING:
    from crawler.records import PageResult

__all__ = [
    "MAX_VIEW_KEYS",
    "RESERVED_NAMES",
    "ItemRegistry",
    "Registered",
    "declared_item_types",
    "drop_sql",
]

logger = logging.getLogger(__name__)

RESERVED_NAMES: Final = frozenset({
    # tables and views, on either database
    "crawls", "requests", "pages", "links", "items", "errors", "robots",
    "item_errors", "item_keys", "item_tables", "fetches", "item_history", "item_versions",
    "fingerprints", "fingerprints_recent", "fingerprints_new", "fingerprint_levels", "hosts",
    "frontier_counts", "frontier_pending", "stats_ts", "host_stats", "crawler_schema",
    "requests_new",  # only while a migration rebuilds `requests`
    # indexes and triggers (SQLite: the same namespace as tables; PostgreSQL: indexes)
    "fetches_request", "item_history_request", "item_keys_request", "items_request",
    "items_type", "links_page", "requests_budget_skips", "requests_frontier",
    "requests_frontier_dfs", "requests_leased", "requests_due", "robots_host", "stats_ts_run",
    "requests_lease_owner", "requests_host_leases",
    "requests_count_insert", "requests_count_reopen", "requests_count_skip",
    "requests_count_state", "requests_fingerprint_add", "requests_fingerprint_known",
    "requests_pending_insert", "requests_pending_update", "requests_pending_delete",
})  # fmt: skip
"""Every name the crawler's own schema gives a table, view, index or trigger, now or while it
migrates: an item type of one of these names gets a suffixed table, so no later migration
finds its name taken (tests/test_reserved_names.py reads them from a fresh database and
from the schema's SQL)."""

MAX_VIEW_KEYS: Final = 500
_UNSAFE_KEY: Final = re.compile(r'["\\\x00-\x1f]')

_REGISTERED_VIEWS_FIRST: Final = "SELECT kind, name FROM item_tables ORDER BY kind DESC"
"""Every registered object, views before the tables (the order to drop them in)."""
_REGISTERED_OBJECTS: Final = "SELECT type, kind, name FROM item_tables"


@dataclass(slots=True)
class Registered:
    """One registered table or view: where a type's rows are, and its columns."""

    type_name: str
    name: str
    columns: dict[str, str] = field(default_factory=dict)
    """Field or key → column, in column order."""
    json_columns: list[str] = field(default_factory=list)
    kinds: dict[str, ColumnKind] = field(default_factory=dict)
    """Tables: column → the kind of its field."""
    skipped_keys: set[str] = field(default_factory=set)
    """Views: keys that get no column (unsafe, or beyond `MAX_VIEW_KEYS`)."""

    @classmethod
    def decode(cls, type_name: object, name: object, columns: str, json_columns: str) -> Self:
        """Rebuild an object from its `item_tables` row (columns as JSON text)."""
        return cls(
            str(type_name),
            str(name),
            columns={str(k): str(v) for k, v in json.loads(columns).items()},
            json_columns=[str(c) for c in json.loads(json_columns)],
        )

    def carry_over(self, cached: Self) -> None:
        """Keep what this process knew of the object beyond its row: the keys it skipped."""
        self.skipped_keys = cached.skipped_keys

    def knows(self, keys: Iterable[str]) -> bool:
        """Whether every key of `keys` is a column already, or was skipped."""
        return (self.columns.keys() | self.skipped_keys).issuperset(keys)

    def add_fields(self, fields: Iterable[tuple[str, ColumnKind]]) -> list[tuple[str, ColumnKind]]:
        """Give each field that has no column one; return the new columns with their kinds."""
        taken = self._taken_columns()
        added: list[tuple[str, ColumnKind]] = []
        for field_name, kind in fields:
            if field_name in self.columns:
                continue
            column = unique_column(field_name, taken)
            self.columns[field_name] = column
            self.kinds[column] = kind
            added.append((column, kind))
            if kind is ColumnKind.JSON:
                self.json_columns.append(column)
        return added

    def add_keys(self, keys: Iterable[str]) -> list[str]:
        """Give each new key of a dict type a column, but for keys SQL cannot name safely and
        those beyond `MAX_VIEW_KEYS` (skipped, with a warning); return the keys added."""
        taken = self._taken_columns()
        added: list[str] = []
        for key in keys:
            if key in self.columns or key in self.skipped_keys:
                continue
            if _UNSAFE_KEY.search(key) or len(self.columns) >= MAX_VIEW_KEYS:
                logger.warning(
                    "%s items: key %r is not a column of %s", self.type_name, key, self.name
                )
                self.skipped_keys.add(key)
                continue
            self.columns[key] = unique_column(key, taken)
            added.append(key)
        return added

    def copy_sql(self, read: Callable[[str, str], str], type_value: str) -> str:
        """INSERT … SELECT copying the items of type `type_value` (SQL) newer than the
        table's newest row; `read(key, column)` is the SQL reading a field of `items.data`."""
        quoted = quote_identifier(self.name)
        targets = [ID_COLUMN, *self.columns.values(), *META_COLUMNS]
        values = ["id", *(read(key, column) for key, column in self.columns.items())]
        values += META_COLUMNS
        return (
            f"INSERT INTO {quoted} ({', '.join(quote_identifier(c) for c in targets)}) "
            f"SELECT {', '.join(values)} FROM items WHERE type = {type_value} "
            f"AND id > (SELECT coalesce(max({quote_identifier(ID_COLUMN)}), 0) FROM {quoted})"
        )

    def select_sql(self, read: Callable[[str, str], str]) -> str:
        """The SELECT of a view: `read(key, column)` is the SQL reading a key of `items.data`."""
        columns = [f"id AS {quote_identifier(ID_COLUMN)}"]
        columns += [
            f"{read(key, column)} AS {quote_identifier(column)}"
            for key, column in self.columns.items()
        ]
        columns += META_COLUMNS
        return f"SELECT {', '.join(columns)} FROM items WHERE type = {sql_literal(self.type_name)}"

    def _taken_columns(self) -> set[str]:
        return {c.lower() for c in (ID_COLUMN, *META_COLUMNS, *self.columns.values())}


Conn = TypeVar("Conn")
Entry = TypeVar("Entry", bound=Registered)


class ItemRegistry(ABC, Generic[Conn, Entry]):
    """The typed tables and views of one database, as one writer sees them.

    Create one per write connection; it caches each type's columns, so a batch costs one
    statement per item type, whatever its size.
    """

    ID_TYPE: ClassVar[str]
    """The declaration of the `item_id` column."""
    META_TYPES: ClassVar[tuple[str, ...]]
    """The types of `META_COLUMNS`."""

    def __init__(self) -> None:
        self._tables: dict[str, Entry] = {}
        self._views: dict[str, Entry] = {}
        self._checked: set[type] = set()
        self._loaded = False

    async def write(self, conn: Conn, results: Sequence[PageResult]) -> None:
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
                await self._copy(conn, table)
            else:
                await self._refresh_view(conn, type_name, results)

    async def ensure_table(
        self, conn: Conn, type_name: str, fields: Iterable[tuple[str, ColumnKind]]
    ) -> None:
        """Create the table of `type_name`, or add the columns it lacks for `fields`."""
        await self._load(conn)
        table = self._tables.get(type_name)
        created = table is None
        if table is None:
            table = self._entry(type_name, await self._free_name(conn, type_name, ""))
        added = table.add_fields(fields)
        if not added and not created:
            return
        quoted = quote_identifier(table.name)
        definitions = [f"{quote_identifier(c)} {self._column_type(k)}" for c, k in added]
        if created:
            head = [f"{quote_identifier(ID_COLUMN)} {self.ID_TYPE}"]
            tail = [
                f"{quote_identifier(c)} {t}"
                for c, t in zip(META_COLUMNS, self.META_TYPES, strict=True)
            ]
            body = ",\n  ".join(head + definitions + tail)
            await self._execute(conn, f"CREATE TABLE {quoted} (\n  {body}\n)")
        else:
            for definition in definitions:
                await self._execute(conn, f"ALTER TABLE {quoted} ADD COLUMN {definition}")
        self._columns_changed(table)
        self._tables[type_name] = table
        await self._register(conn, table, _registration(table, "table"))

    async def declare(self, conn: Conn, types: Iterable[type]) -> None:
        """Create the tables of the dataclasses `types` (see `declared_item_types`)."""
        for cls in types:
            await self.ensure_table(conn, dataclass_type_name(cls), item_fields(cls))

    async def drop_all(self, conn: Conn) -> None:
        """Drop every registered item table and view (for `--fresh`), in the caller's
        transaction."""
        for kind, name in await self._fetch(conn, _REGISTERED_VIEWS_FIRST):
            await self._execute(conn, drop_sql(kind, name))
        await self._execute(conn, "DELETE FROM item_tables")

    async def drop_emptied(self, conn: Conn, request_ids: str) -> None:
        """Delete the typed rows of the requests the query `request_ids` selects (a reparse
        writes them again), then drop and unregister each table or view left with no rows:
        it is made again from the current dataclass or keys as items arrive."""
        for type_name, kind, name in await self._fetch(conn, _REGISTERED_OBJECTS):
            quoted = quote_identifier(str(name))
            if kind == "table":
                delete = f"DELETE FROM {quoted} WHERE request_id IN ({request_ids})"
                await self._execute(conn, delete)
                rows = f"SELECT 1 FROM {quoted} LIMIT 1"
            else:
                rows = f"SELECT 1 FROM items WHERE type = {sql_literal(str(type_name))} LIMIT 1"
            if not await self._fetch(conn, rows):
                await self._execute(conn, drop_sql(kind, name))
                await self._execute(
                    conn, f"DELETE FROM item_tables WHERE name = {sql_literal(str(name))}"
                )

    async def _add_view_keys(
        self, conn: Conn, type_name: str, keys: Iterable[str]
    ) -> tuple[Entry, list[str]]:
        """The view of `type_name` (made when it has none) with a column for each new key of
        `keys`, read again from `item_tables` first; and the keys added."""
        await self._load(conn, force=True)  # another process may have changed it
        view = self._views.get(type_name)
        if view is None:
            view = self._entry(type_name, await self._free_name(conn, type_name, "_view"))
            self._views[type_name] = view
        return view, view.add_keys(keys)

    async def _replace_view(self, conn: Conn, view: Entry) -> None:
        """Make the view again with its columns now, and register it."""
        quoted = quote_identifier(view.name)
        await self._execute(conn, f"DROP VIEW IF EXISTS {quoted}")
        await self._execute(conn, f"CREATE VIEW {quoted} AS {self._view_select(view)}")
        await self._register(conn, view, _registration(view, "view"))

    async def _load(self, conn: Conn, *, force: bool = False) -> None:
        """Read `item_tables` (once, or again when `force`), keeping objects that exist."""
        if self._loaded and not force:
            return
        self._loaded = True
        for kind, entry in await self._registered(conn):
            known = self._tables if kind == "table" else self._views
            if (cached := known.get(entry.type_name)) is not None:
                entry.carry_over(cached)
            known[entry.type_name] = entry

    async def _free_name(self, conn: Conn, type_name: str, suffix: str) -> str:
        """The first of `type_name{suffix}`, `type_name_items{suffix}`,
        `type_name_items_2{suffix}`… that is neither reserved nor taken."""
        for name in _candidate_names(type_name, suffix):
            lowered = name.lower()
            if lowered not in RESERVED_NAMES and not await self._taken(conn, lowered):
                return name
        raise AssertionError("unreachable: the candidates never end")

    def _columns_changed(self, table: Entry) -> None:
        """Called when a table got new columns (to renew what is built from them)."""

    @abstractmethod
    def _entry(self, type_name: str, name: str) -> Entry:
        """A new, empty object."""

    @abstractmethod
    def _column_type(self, kind: ColumnKind) -> str:
        """The declared type of a column of `kind`."""

    @abstractmethod
    async def _execute(self, conn: Conn, sql: str) -> None:
        """Run one statement without parameters."""

    @abstractmethod
    async def _taken(self, conn: Conn, lowered: str) -> bool:
        """Whether the lowercase name is the database's own or already names an object."""

    @abstractmethod
    async def _registered(self, conn: Conn) -> list[tuple[str, Entry]]:
        """The objects `item_tables` registers that exist, each with its kind."""

    @abstractmethod
    async def _fetch(self, conn: Conn, sql: str) -> list[tuple[Any, ...]]:
        """The rows of one query without parameters."""

    @abstractmethod
    async def _register(self, conn: Conn, entry: Entry, values: Sequence[str]) -> None:
        """Write the object's `item_tables` row: `values` are its type, kind, name, columns
        and json_columns."""

    @abstractmethod
    async def _copy(self, conn: Conn, table: Entry) -> None:
        """Copy the type's `items` rows newer than the table's newest into it."""

    @abstractmethod
    async def _refresh_view(
        self, conn: Conn, type_name: str, results: Sequence[PageResult]
    ) -> None:
        """Give the view of a dict type the keys its items now have."""

    @abstractmethod
    def _view_select(self, view: Entry) -> str:
        """The SELECT of the view (see `Registered.select_sql`)."""


def declared_item_types(spider: Spider) -> list[type]:
    """The spider's `item_types`.

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
    return declared


def drop_sql(kind: object, name: object) -> str:
    """The statement dropping a registered table or view."""
    what = "VIEW" if kind == "view" else "TABLE"
    return f"DROP {what} IF EXISTS {quote_identifier(str(name))}"


def _registration(entry: Registered, kind: str) -> tuple[str, str, str, str, str]:
    """An object's `item_tables` values: type, kind, name, columns and json_columns."""
    return (
        entry.type_name,
        kind,
        entry.name,
        json.dumps(entry.columns, ensure_ascii=False),
        json.dumps(entry.json_columns, ensure_ascii=False),
    )


def _candidate_names(type_name: str, suffix: str) -> Iterator[str]:
    yield f"{type_name}{suffix}"
    yield f"{type_name}_items{suffix}"
    number = 2
    while True:
        yield f"{type_name}_items_{number}{suffix}"
        number += 1
