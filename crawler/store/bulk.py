"""Many rows in one SQLite statement, and many statements in one call to the database thread.

aiosqlite runs statements in its own thread, and `executemany` hands the GIL back and forth
once per row (bind in Python, step in C). While the event loop is busy each retake waits for
the loop thread to let go, so a commit of a few thousand rows took tens of milliseconds
under load, and the claims queued behind it starved the workers. A `BulkStatement` binds one
parameter — the JSON text of all rows — and `json_each` feeds them to an
`INSERT … SELECT` or `UPDATE … FROM` inside SQLite, in order, without the GIL.

Each `await` on the connection also costs a turn of the event loop, and a busy loop's turn
is long (every ready worker runs a page's parsing in it). So a `Script` gathers a whole
batch's statements, rows inlined as quoted JSON literals, and runs them with one
`executescript`: a commit is a handful of awaits instead of one per table.

Values must be JSON-representable: None, bool, int (64-bit), finite float and str. BLOB
columns (a page's stored body) go through `executemany` instead. SQLite's JSON functions
end a string at a NUL character, so a NUL in a value is stored as U+FFFD, the replacement
character (as undecodable bytes are).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Final, final

import aiosqlite

__all__ = ["BulkStatement", "Script", "select_in"]

_PARAMS_PER_QUERY: Final = 500
"""Most values of an `IN (...)` list in one query (SQLite allows more; this keeps each short)."""
_ROW: Final = "_row"
_ROWS_IN_ORDER: Final = " FROM {rows} ORDER BY {order}"
_HAS_ARROW: Final = sqlite3.sqlite_version_info >= (3, 38)
"""SQLite 3.38 added `->>`, which reads a row's fields ~20% faster than `json_extract`."""


def _field(index: int) -> str:
    """The SQL that reads field `index` of the current row."""
    if _HAS_ARROW:
        return f"{_ROW}.value ->> {index}"
    return f"json_extract({_ROW}.value, '$[{index}]')"


_ESCAPED_NUL: Final = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
r"""A JSON `\u0000` escape, not an escaped backslash followed by "u0000"."""


@final
class BulkStatement:
    """One statement run once for a whole list of rows (tuples of column values).

    Write it with `{rows}` where the row source goes, `{0}`, `{1}` … for the fields of a row,
    `{order}` for the rows' list order and `{row}` for the row's JSON value (a field that is
    itself a list can be split again: `json_each({row}, '$[2]')`), e.g.
    `INSERT INTO t (a, b) SELECT {0}, {1} FROM {rows} ORDER BY {order}`.

    Example:
        ```python
        insert = BulkStatement(
            "INSERT INTO pages (id, url) SELECT {0}, {1} FROM {rows} ORDER BY {order}", 2
        )
        await insert.run(conn, [(1, "http://a.test/"), (2, "http://a.test/b")])
        ```
    """

    def __init__(self, template: str, fields: int, *, update_first: str = "") -> None:
        """`update_first`, written the same way, runs before `template` with the same rows:
        an upsert's update of the rows the table holds, where no unique index is there for
        `ON CONFLICT` (crawler.store.fingerprints)."""
        values = [_field(i) for i in range(fields)]
        self.fields = fields
        source = {"rows": f"json_each(?) AS {_ROW}", "order": f"{_ROW}.key", "row": f"{_ROW}.value"}
        self.sql = template.format(*values, **source)
        self.update_sql = update_first.format(*values, **source) if update_first else None
        simple = template.removesuffix(_ROWS_IN_ORDER)
        one_row = simple != template and self.update_sql is None
        self.row_sql = simple.format(*["?"] * fields) if one_row else None
        """The same statement for one row of parameters (`INSERT … SELECT ?, ?`), when the
        template ends in `FROM {rows} ORDER BY {order}`: for `executemany`."""

    async def run(self, conn: aiosqlite.Connection, rows: Sequence[Sequence[object]]) -> int:
        """Run the statement for `rows` on its own (nothing happens for an empty list);
        return how many rows it changed (not counting what triggers changed).

        Uses `executemany` when the statement has a one-row form: on its own, a statement
        gains nothing from JSON, and SQLite reads plain parameters faster.

        Raises:
            ValueError: a row has the wrong number of fields, or a float is not finite.
            TypeError: a value JSON cannot carry (bytes, objects).
        """
        if not rows:
            return 0
        if self.row_sql is not None:
            if len(rows[0]) != self.fields:
                raise ValueError(f"rows of {len(rows[0])} fields for a statement of {self.fields}")
            cursor = await conn.executemany(self.row_sql, rows)
            return max(0, cursor.rowcount)
        param = (self._json(rows),)
        changed = 0
        if self.update_sql is not None:
            changed = max(0, (await conn.execute(self.update_sql, param)).rowcount)
        cursor = await conn.execute(self.sql, param)
        return changed + max(0, cursor.rowcount)

    def inline(self, rows: Sequence[Sequence[object]]) -> str:
        """The statement for `rows` with their JSON as a quoted SQL literal (for a `Script`).

        Raises:
            as `run`.
        """
        source = f"json_each({_literal(self._json(rows))})"
        sql = self.sql.replace("json_each(?)", source, 1)
        if self.update_sql is None:
            return sql
        return self.update_sql.replace("json_each(?)", source, 1) + ";\n" + sql

    def _json(self, rows: Sequence[Sequence[object]]) -> str:
        if len(rows[0]) != self.fields:
            raise ValueError(f"rows of {len(rows[0])} fields for a statement of {self.fields}")
        text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if "\\u0000" in text:  # rare: only then look for escapes that are really NULs
            text = _ESCAPED_NUL.sub(lambda m: m.group(1) + "\\ufffd", text)
        return text


def _literal(text: str) -> str:
    """`text` as an SQL string literal. JSON text never holds a raw NUL (it escapes control
    characters), so doubling the quotes is all the escaping it needs."""
    return "'" + text.replace("'", "''") + "'"


@final
class Script:
    """Statements gathered for one `executescript` call (or one call each), in order; empty
    row lists add none.

    Example:
        ```python
        script = Script()
        script.add(insert_pages, page_rows)
        script.add(insert_items, item_rows)
        await script.run_as_transaction(conn)
        ```
    """

    def __init__(self) -> None:
        self._steps: list[str | tuple[BulkStatement, Sequence[Sequence[object]]]] = []

    def add(self, statement: BulkStatement, rows: Sequence[Sequence[object]]) -> None:
        """Add `statement` for `rows` (nothing for an empty list)."""
        if rows:
            self._steps.append((statement, rows))

    def add_sql(self, sql: str) -> None:
        """Add a statement without parameters."""
        self._steps.append(sql)

    def extend(self, other: Script) -> None:
        """Add the statements of `other`, after these."""
        self._steps.extend(other._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def steps(self) -> list[str | tuple[BulkStatement, Sequence[Sequence[object]]]]:
        """The gathered statements in order: SQL text, or a statement with its rows (for
        another database's form of the same statements: crawler.store.pg_statements)."""
        return list(self._steps)

    async def run_as_transaction(self, conn: aiosqlite.Connection) -> None:
        """Run the statements in one `BEGIN IMMEDIATE … COMMIT`, in one call, rows inlined.

        The connection must not be in a transaction: `executescript` commits an open one
        first. On an error the transaction is left open for the caller to roll back.

        Raises:
            as `BulkStatement.run`, before anything is sent.
        """
        statements = [
            step if isinstance(step, str) else step[0].inline(step[1]) for step in self._steps
        ]
        await conn.executescript(";\n".join(["BEGIN IMMEDIATE", *statements, "COMMIT"]))

    async def run_each(self, conn: aiosqlite.Connection) -> None:
        """Run the statements one call each (`BulkStatement.run`), inside the caller's
        transaction."""
        for step in self._steps:
            if isinstance(step, str):
                await conn.execute(step)
            else:
                await step[0].run(conn, step[1])


async def select_in(
    conn: aiosqlite.Connection,
    sql: str,
    values: Sequence[object],
    params: Sequence[object] = (),
) -> list[sqlite3.Row]:
    """The rows of `sql` (which has `{marks}` where the `IN` list goes, after `params`) for
    every value of `values`, a few hundred values per query.

    Example:
        ```python
        rows = await select_in(conn, "SELECT id FROM t WHERE k = ? AND id IN ({marks})",
                               ids, params=("a",))
        ```
    """
    found: list[sqlite3.Row] = []
    for start in range(0, len(values), _PARAMS_PER_QUERY):
        chunk = values[start : start + _PARAMS_PER_QUERY]
        query = sql.format(marks=",".join("?" * len(chunk)))
        async with conn.execute(query, [*params, *chunk]) as cursor:
            found.extend(await cursor.fetchall())
    return found
