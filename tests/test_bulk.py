"""Bulk statements and one-call scripts (crawler.store.bulk) against a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from crawler.store.bulk import BulkStatement, Script

AWKWARD_ROWS: list[tuple[object, ...]] = [
    (1, "plain", 1.5, None),
    (-9223372036854775808, "it's 'quoted'; DROP TABLE t; --", 0.1, 9223372036854775807),
    (3, 'café € 東京 😀 \\ " \n \t \x00 \u2028', 1e-300, True),
    (4, "", -0.0, False),
    (5, "not a NUL: \\u0000, \\\\u0000", 2.0, None),
]
INSERT = BulkStatement(
    "INSERT INTO t (a, b, c, d) SELECT {0}, {1}, {2}, {3} FROM {rows} ORDER BY {order}", 4
)


async def open_table(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL, d)")
    return conn


def stored(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT a, b, c, d FROM t ORDER BY id").fetchall()


def expected(*, nul: str = "\ufffd") -> list[tuple[object, ...]]:
    """The rows as stored: bools as integers, a NUL character as `nul` (U+FFFD when the rows
    travel as JSON)."""
    return [
        tuple(
            int(v) if isinstance(v, bool) else v.replace("\x00", nul) if isinstance(v, str) else v
            for v in row
        )
        for row in AWKWARD_ROWS
    ]


async def test_a_bulk_statement_on_its_own_stores_every_value_exactly_and_in_order(
    tmp_path: Path,
) -> None:
    conn = await open_table(tmp_path / "t.db")
    assert INSERT.row_sql == "INSERT INTO t (a, b, c, d) SELECT ?, ?, ?, ?"
    await INSERT.run(conn, AWKWARD_ROWS)  # one row of parameters at a time
    await INSERT.run(conn, [])  # nothing to do
    await conn.close()
    assert stored(tmp_path / "t.db") == expected(nul="\x00")


async def test_a_statement_without_a_one_row_form_reads_its_rows_from_json(
    tmp_path: Path,
) -> None:
    conn = await open_table(tmp_path / "t.db")
    await INSERT.run(conn, AWKWARD_ROWS)
    update = BulkStatement("UPDATE t SET b = {1} FROM {rows} WHERE t.a = {0}", 2)
    assert update.row_sql is None
    await update.run(conn, [(1, "one"), (3, "it's three\x00")])
    await conn.close()
    assert [row[1] for row in stored(tmp_path / "t.db")[:3]] == [
        "one",
        AWKWARD_ROWS[1][1],
        "it's three\ufffd",
    ]


async def test_a_script_inlines_the_rows_safely_and_commits_them_in_one_call(
    tmp_path: Path,
) -> None:
    conn = await open_table(tmp_path / "t.db")
    script = Script()
    script.add(INSERT, AWKWARD_ROWS)
    script.add(INSERT, [])
    assert len(script) == 1
    await script.run_as_transaction(conn)
    assert not conn.in_transaction
    await conn.close()
    assert stored(tmp_path / "t.db") == expected()


async def test_a_failing_script_leaves_its_transaction_for_the_caller_to_roll_back(
    tmp_path: Path,
) -> None:
    conn = await open_table(tmp_path / "t.db")
    await conn.execute("CREATE UNIQUE INDEX t_a ON t (a)")
    script = Script()
    script.add(INSERT, [(1, "first", 0.0, None)])
    script.add(INSERT, [(1, "clash", 0.0, None)])
    with pytest.raises(sqlite3.IntegrityError):
        await script.run_as_transaction(conn)
    assert conn.in_transaction
    await conn.execute("ROLLBACK")
    await conn.close()
    assert stored(tmp_path / "t.db") == []


async def test_run_each_runs_the_same_statements_inside_the_callers_transaction(
    tmp_path: Path,
) -> None:
    conn = await open_table(tmp_path / "t.db")
    script = Script()
    script.add(INSERT, AWKWARD_ROWS)
    await conn.execute("BEGIN IMMEDIATE")
    await script.run_each(conn)
    await conn.execute("COMMIT")
    await conn.close()
    assert stored(tmp_path / "t.db") == expected(nul="\x00")


async def test_rows_that_json_cannot_carry_or_of_the_wrong_width_are_refused(
    tmp_path: Path,
) -> None:
    conn = await open_table(tmp_path / "t.db")
    try:
        with pytest.raises(ValueError, match="3 fields for a statement of 4"):
            await INSERT.run(conn, [(1, "x", 0.0)])
        for bad, error in [
            ((1, "x", float("nan"), None), ValueError),
            ((1, b"x", 0, None), TypeError),
        ]:
            script = Script()
            script.add(INSERT, [bad])
            with pytest.raises(error):
                await script.run_as_transaction(conn)  # refused before anything is sent
            assert not conn.in_transaction
    finally:
        await conn.close()
    assert stored(tmp_path / "t.db") == []
