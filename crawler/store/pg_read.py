"""Reading a PostgreSQL crawl database from synchronous code (the read-side commands), through
the same few calls as an `sqlite3.Connection`: `execute(sql, params)` returning a cursor with
`description`, `rowcount`, `fetchone`, `fetchall` and iteration, and `close()`.

So `crawler query`, `stats`, `status` and `export` run the same SQL on both databases. The
connection runs asyncpg on an event loop of its own. Parameters are SQLite's (`?` in order,
or `:name` from a dict) and are written into the statement as SQL literals (PostgreSQL then
gives them the type their place asks for, as SQLite does). Unless opened for writing, every
statement runs in a READ ONLY transaction, which PostgreSQL itself enforces. Rows are
fetched through a cursor in chunks, so a million-row export holds one chunk at a time.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, TypeAlias, final

import asyncpg

from crawler.errors import QueryError, StorageError
from crawler.store.pg_schema import PG_SCHEMA_VERSION, connect_pg, pg_error
from crawler.store.pg_url import redact

__all__ = ["PgReader", "ReadConnection", "open_pg_crawl", "sql_literal_of"]

_CHUNK: Final = 1000
_TOKENS: Final = re.compile(
    r"""('(?:[^']|'')*')|("(?:[^"]|"")*")|(--[^\n]*)|(::)|(\?)|(:[A-Za-z_]\w*)|(\$\$)"""
)


def sql_literal_of(value: object) -> str:
    """`value` (None, bool, int, float, str or bytes) as a PostgreSQL literal.

    Raises:
        QueryError: a value of another type.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"'{value}'::float8"
    if isinstance(value, str):
        return "'" + value.replace("\x00", "\ufffd").replace("'", "''") + "'"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    raise QueryError(f"cannot bind a value of type {type(value).__name__}")


def bind(sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> str:
    """`sql` with SQLite's placeholders replaced by the parameters as literals.

    Raises:
        QueryError: too few parameters, or a name without a value.
    """
    if not params:
        return sql
    positional = iter(params) if not isinstance(params, Mapping) else None

    def replace(match: re.Match[str]) -> str:
        if match.group(5):
            if positional is None:
                raise QueryError("the SQL uses ? but the parameters are named")
            try:
                return sql_literal_of(next(positional))
            except StopIteration:
                raise QueryError("not enough parameters for the SQL's ? marks") from None
        if match.group(6) and isinstance(params, Mapping):
            name = match.group(6)[1:]
            if name not in params:
                raise QueryError(f"no value for :{name} (give it with --param {name}=VALUE)")
            return sql_literal_of(params[name])
        return match.group(0)

    return _TOKENS.sub(replace, sql)


@final
class PgCursor:
    """The result of one statement: columns, then rows fetched in chunks."""

    def __init__(self, reader: PgReader, sql: str) -> None:
        self._reader = reader
        self.description: list[tuple[str, None, None, None, None, None, None]] | None = None
        self.rowcount = -1
        self._buffer: list[tuple[Any, ...]] = []
        self._cursor: Any = None
        self._done = False
        self._numeric: list[int] = []
        """Columns of type numeric (`sum()` of integers): ints or floats, as SQLite gives."""
        reader.run(self._start(sql))

    async def _start(self, sql: str) -> None:
        conn = self._reader.conn
        statement = await conn.prepare(sql)
        attributes = statement.get_attributes()
        if not attributes:
            await statement.fetch()
            status = statement.get_statusmsg() or ""
            tail = status.rsplit(" ", 1)[-1]
            self.rowcount = int(tail) if tail.isdigit() else -1
            self._done = True
            return
        self.description = [(a.name, None, None, None, None, None, None) for a in attributes]
        self._numeric = [i for i, a in enumerate(attributes) if a.type.name == "numeric"]
        self._cursor = await statement.cursor()

    def _more(self) -> bool:
        if self._done or self._cursor is None:
            return False
        rows = self._reader.run(self._cursor.fetch(_CHUNK))
        if self._numeric:
            self._buffer.extend(self._plain(tuple(row)) for row in rows)
        else:
            self._buffer.extend(tuple(row) for row in rows)
        if len(rows) < _CHUNK:
            self._done = True
        return bool(rows)

    def _plain(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in self._numeric:
            if isinstance(value := values[i], Decimal):
                values[i] = int(value) if value == value.to_integral_value() else float(value)
        return tuple(values)

    def fetchone(self) -> Any:
        """The next row (a tuple), or None."""
        if not self._buffer and not self._more():
            return None
        return self._buffer.pop(0) if self._buffer else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every row left."""
        while self._more():
            pass
        rows, self._buffer = self._buffer, []
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while self._buffer or self._more():
            rows, self._buffer = self._buffer, []
            yield from rows


@final
class PgReader:
    """A synchronous connection to a PostgreSQL crawl database (see the module docstring)."""

    def __init__(self, url: str, *, write: bool = False) -> None:
        self.url = url
        self.write = write
        self._loop = asyncio.new_event_loop()
        try:
            self.conn: asyncpg.Connection = self._loop.run_until_complete(connect_pg(url))
        except Exception as exc:
            self._loop.close()
            raise pg_error(url, exc, "read") from None
        self._transaction = self.conn.transaction(readonly=not write)
        self.run(self._transaction.start())

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine on this connection's loop; an error of the connection itself is a
        StorageError naming the database."""
        try:
            return self._loop.run_until_complete(coroutine)
        except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError) as exc:
            raise pg_error(self.url, exc, "read") from None

    def execute(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = (), /
    ) -> PgCursor:
        """Run one statement (SQLite's placeholders, see `bind`)."""
        return PgCursor(self, bind(sql, params))

    def commit(self) -> None:
        """Commit what a writing connection did (a read-only one has nothing to commit)."""
        self.run(self._transaction.commit())
        self._transaction = self.conn.transaction(readonly=not self.write)
        self.run(self._transaction.start())

    def close(self) -> None:
        """Commit (when writing) or roll back, and close."""
        try:
            if self.write:
                self.run(self._transaction.commit())
            else:
                self.run(self._transaction.rollback())
            self.run(self.conn.close(timeout=5))
        except (StorageError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self.conn.terminate()
        finally:
            self._loop.close()


ReadConnection: TypeAlias = sqlite3.Connection | PgReader
"""A connection the read side can run its SQL on: an SQLite file's or a PostgreSQL one."""


def open_pg_crawl(url: str) -> PgReader:
    """A reader of the crawl database at `url`, refusing a database that holds no crawl or
    one of a newer schema (crawler.cli.readonly `open_crawl_database`)."""
    reader = PgReader(url)
    try:
        found = reader.execute("SELECT to_regclass('crawler_schema') IS NOT NULL").fetchone()
        if not found[0]:
            raise StorageError(f"{redact(url)} is not a crawl database")
        version = int(reader.execute("SELECT version FROM crawler_schema").fetchone()[0])
        if version > PG_SCHEMA_VERSION:
            raise StorageError(
                f"{redact(url)} has schema version {version}, newer than this crawler's "
                f"{PG_SCHEMA_VERSION}: use a newer crawler"
            )
    except BaseException:
        reader.close()
        raise
    return reader
