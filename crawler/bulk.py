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
from collections.abc import Sequence
from typing import Final, final

import aiosqlite

__all__ = ["BulkStatement", "Script"]

_ROW: Final = "_row"
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

    def __init__(self, template: str, fields: int) -> None:
        values = [f"json_extract({_ROW}.value, '$[{i}]')" for i in range(fields)]
        self.fields = fields
        self.sql = template.format(
            *values, rows=f"json_each(?) AS {_ROW}", order=f"{_ROW}.key", row=f"{_ROW}.value"
        )

    async def run(self, conn: aiosqlite.Connection, rows: Sequence[Sequence[object]]) -> None:
        """Run the statement for `rows` (nothing happens for an empty list).

        Raises:
            ValueError: a row has the wrong number of fields, or a float is not finite.
            TypeError: a value JSON cannot carry (bytes, objects).
        """
        if rows:
            await conn.execute(self.sql, (self._json(rows),))

    def inline(self, rows: Sequence[Sequence[object]]) -> str:
        """The statement for `rows` with their JSON as a quoted SQL literal (for a `Script`).

        Raises:
            as `run`.
        """
        return self.sql.replace("json_each(?)", f"json_each({_literal(self._json(rows))})", 1)

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
    """Statements gathered for one `executescript` call, in order; empty row lists add none.

    Example:
        ```python
        script = Script()
        script.add(insert_pages, page_rows)
        script.add(insert_items, item_rows)
        await script.run_as_transaction(conn)
        ```
    """

    def __init__(self) -> None:
        self.statements: list[str] = []

    def add(self, statement: BulkStatement, rows: Sequence[Sequence[object]]) -> None:
        """Add `statement` for `rows` (nothing for an empty list)."""
        if rows:
            self.statements.append(statement.inline(rows))

    async def run_as_transaction(self, conn: aiosqlite.Connection) -> None:
        """Run the statements in one `BEGIN IMMEDIATE … COMMIT`, in one call.

        The connection must not be in a transaction: `executescript` commits an open one
        first. On an error the transaction is left open for the caller to roll back.
        """
        body = ";\n".join(["BEGIN IMMEDIATE", *self.statements, "COMMIT"])
        await conn.executescript(body)

    async def run_each(self, conn: aiosqlite.Connection) -> None:
        """Run the statements one call each, inside the caller's transaction."""
        for statement in self.statements:
            await conn.execute(statement)
