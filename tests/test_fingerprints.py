"""The fingerprint set of a SQLite file in three levels (crawler.store.fingerprints): a set
under any mix of inserts, flushes and merges, one request per fingerprint across processes,
merges that a kill -9 leaves whole or undone, the policy, and the insert's trigger reopening
a URL refused for depth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawler.store import statements
from crawler.store.fingerprints import (
    FLUSH,
    FLUSH_AT,
    MERGE,
    MERGE_AT_LEAST,
    MERGE_FRACTION,
    merges_due,
)
from crawler.store.migrations import MIGRATIONS
from crawler.store.schema import APPLICATION_ID, SCHEMA_VERSION, _statements, open_database
from tests.conftest import ROOT
from tests.databases import assert_fingerprint_set, assert_intact, rows, scalar

NOW: Final = "2026-01-01T00:00:00.000+00:00"
EDGES: Final = (-(2**63), -1, 0, 1, 2**63 - 1)


async def new_database(path: Path) -> Path:
    """A new crawl database at `path` (the real schema, all migrations run)."""
    await (await open_database(path)).close()
    return path


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """An empty crawl database to copy (open_database once for the module's examples)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield asyncio.run(new_database(Path(tmp) / "template.db"))


def skipped_rows(fingerprints: list[int], tag: str) -> list[tuple[object, ...]]:
    """`INSERT_SKIPPED` rows for `fingerprints`, their URLs telling which insert made them."""
    return [
        (f"http://a.test/{tag}/{n}", fp, "a.test", 1, "offsite", None, 1, NOW, NOW)
        for n, fp in enumerate(fingerprints)
    ]


def request_rows(fingerprints: list[int], tag: str) -> list[tuple[object, ...]]:
    """`INSERT_REQUEST` rows (pending requests) for `fingerprints`."""
    return [
        (f"http://a.test/{tag}/{n}", fp, "a.test", "GET", "parse", None, None, 1, 0, None, 1, NOW)
        for n, fp in enumerate(fingerprints)
    ]


def run(conn: sqlite3.Connection, script: tuple[str, ...]) -> None:
    """Run `FLUSH`, `MERGE` or both in a transaction, as a writer's batch ends with them."""
    conn.execute("BEGIN IMMEDIATE")
    for sql in script:
        conn.execute(sql)
    conn.execute("COMMIT")


def merge(conn: sqlite3.Connection) -> None:
    """Move every fingerprint into the main level."""
    run(conn, FLUSH + MERGE)


operations = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["skipped", "pending"]),
            st.lists(st.one_of(st.sampled_from(EDGES), st.integers(-20, 20)), max_size=12),
        ),
        st.tuples(st.sampled_from(["flush", "merge", "flush+merge"]), st.just([])),
    ),
    max_size=12,
)
SCRIPTS: Final = {"flush": FLUSH, "merge": MERGE, "flush+merge": FLUSH + MERGE}


@given(operations)
def test_any_mix_of_inserts_and_merges_behaves_as_a_set(
    template: Path, ops: list[tuple[str, list[int]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "crawl.db"
        shutil.copy(template, db)
        first: dict[int, str] = {}  # fingerprint -> URL of the row that holds it
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            for step, (kind, fingerprints) in enumerate(ops):
                if kind in SCRIPTS:
                    run(conn, SCRIPTS[kind])
                    continue
                made = (skipped_rows if kind == "skipped" else request_rows)(
                    fingerprints, str(step)
                )
                statement = (
                    statements.INSERT_SKIPPED if kind == "skipped" else statements.INSERT_REQUEST
                )
                conn.execute("BEGIN IMMEDIATE")
                added = conn.execute(statement.sql, (json.dumps(made),)).rowcount
                conn.execute("COMMIT")
                new = {fp for fp in fingerprints if fp not in first}
                for fp, row in zip(fingerprints, made, strict=True):
                    first.setdefault(fp, str(row[0]))  # the first row of a fingerprint stays
                assert added == len(new)
        assert dict(rows(db, "SELECT fingerprint, url FROM requests")) == first
        assert_fingerprint_set(db)


async def test_flushes_and_merges_move_whole_levels_in_order(tmp_path: Path) -> None:
    db = await new_database(tmp_path / "crawl.db")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute(statements.INSERT_SKIPPED.sql, (json.dumps(skipped_rows([5, -3, 9], "a")),))
        run(conn, FLUSH)
        recent = "SELECT fingerprint FROM fingerprints_recent"
        assert conn.execute(recent).fetchall() == [(-3,), (5,), (9,)]
        run(conn, MERGE)
        conn.execute(statements.INSERT_SKIPPED.sql, (json.dumps(skipped_rows([7, 5, 2], "b")),))
        assert conn.execute("SELECT fingerprint FROM fingerprints_new").fetchall() == [(2,), (7,)]
        run(conn, FLUSH)
        conn.execute(statements.INSERT_SKIPPED.sql, (json.dumps(skipped_rows([1, 7], "c")),))
    assert rows(db, "SELECT fingerprint FROM fingerprints ORDER BY rowid") == [(-3,), (5,), (9,)]
    assert rows(db, "SELECT fingerprint FROM fingerprints_recent") == [(2,), (7,)]
    assert rows(db, "SELECT fingerprint FROM fingerprints_new") == [(1,)]
    assert rows(db, "SELECT merged, recent FROM fingerprint_levels") == [(3, 2)]
    assert_fingerprint_set(db)


_FILL: Final = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :count - 1)
INSERT INTO requests (url, fingerprint, host, depth, state, reason, crawl_id, discovered_at)
SELECT 'http://a.test/' || :start || '/' || i, :start + i * :step, 'a.test', 1, 'skipped',
       'offsite', 1, '2026-01-01' FROM n
"""
"""`count` skipped requests, fingerprints `start`, `start + step`, …"""


def filled(count: int, start: int, step: int = 1) -> dict[str, int]:
    return {"count": count, "start": start, "step": step}


async def test_a_flush_is_due_at_flush_at_and_a_merge_at_a_fraction_of_the_main_level(
    tmp_path: Path,
) -> None:
    db = await new_database(tmp_path / "crawl.db")
    conn = await open_database(db)
    try:
        await conn.execute(_FILL, filled(FLUSH_AT - 1, 0))
        assert await merges_due(conn) == ()
        await conn.execute(_FILL, filled(1, FLUSH_AT))
        assert await merges_due(conn) == FLUSH
        # The sizes of the large levels as flushes and merges would have counted them.
        sizes = "UPDATE fingerprint_levels SET recent = ?, merged = ?"
        await conn.execute(sizes, (MERGE_AT_LEAST - FLUSH_AT - 1, 0))
        assert await merges_due(conn) == FLUSH  # recent still one short after the flush
        await conn.execute(sizes, (MERGE_AT_LEAST - FLUSH_AT, 0))
        assert await merges_due(conn) == FLUSH + MERGE  # the least a merge moves
        await conn.execute("DELETE FROM fingerprints_new")
        await conn.execute(sizes, (MERGE_AT_LEAST, 0))
        assert await merges_due(conn) == MERGE
        # a main level this large: the fraction decides
        main = int(MERGE_AT_LEAST / MERGE_FRACTION) * 2
        await conn.execute(sizes, (MERGE_AT_LEAST, main))
        assert await merges_due(conn) == ()
        await conn.execute(sizes, (int(main * MERGE_FRACTION) - 1, main))
        assert await merges_due(conn) == ()
        await conn.execute(sizes, (int(main * MERGE_FRACTION), main))
        assert await merges_due(conn) == MERGE
    finally:
        await conn.close()


def found_again(
    fingerprint: int, *, depth: int, callback: str, state: str = "pending"
) -> tuple[str, tuple[str]]:
    """`INSERT_REQUEST` (or with `state="skipped"`, `INSERT_REQUEST_SKIPPED`) of one request
    with `fingerprint`, as SQL and its parameter."""
    row: list[object] = [f"http://a.test/{callback}", fingerprint, "a.test", "GET", callback]
    row += [None, '{"m": 1}', depth, depth, 7, 1, NOW]
    statement = (
        statements.INSERT_REQUEST if state == "pending" else statements.INSERT_REQUEST_SKIPPED
    )
    if state != "pending":
        row += ["max_pages", NOW]
    return statement.sql, (json.dumps([row]),)


async def test_a_pending_request_reopens_its_url_refused_for_depth_and_nothing_else(
    tmp_path: Path,
) -> None:
    db = await new_database(tmp_path / "crawl.db")

    def refuse(*found: tuple[int, str]) -> None:
        refused = [
            (f"http://a.test/{fp}", fp, "a.test", 5, why, None, 1, NOW, NOW) for fp, why in found
        ]
        conn.execute(statements.INSERT_SKIPPED.sql, (json.dumps(refused),))

    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        refuse((1, "depth"), (4, "offsite"))
        run(conn, FLUSH + MERGE)  # 1 and 4 in the main level,
        refuse((2, "depth"))
        run(conn, FLUSH)  # 2 in the recent one,
        refuse((3, "depth"), (5, "depth"))  # 3 and 5 in the new one
        conn.execute(*found_again(3, depth=1, callback="skip", state="skipped"))
        refuse((1, "depth"))
        assert conn.execute("SELECT admitted FROM frontier_counts").fetchall() == [(0,)]
        for fp in (1, 2, 4, 5):
            conn.execute(*found_again(fp, depth=2, callback="again"))
    assert rows(
        db,
        "SELECT fingerprint, state, reason, depth, callback, meta, parent_id "
        "FROM requests ORDER BY fingerprint",
    ) == [
        (1, "pending", None, 2, "again", '{"m": 1}', 7),
        (2, "pending", None, 2, "again", '{"m": 1}', 7),
        (3, "skipped", "depth", 5, None, None, None),  # a budget skip does not reopen it
        (4, "skipped", "offsite", 5, None, None, None),  # refused for another reason: stays
        (5, "pending", None, 2, "again", '{"m": 1}', 7),
    ]
    assert scalar(db, "SELECT admitted FROM frontier_counts") == 3
    assert_intact(db)


RACER: Final = """
import json, os, random, sqlite3, sys, time
from crawler.store import statements
from crawler.store.fingerprints import FLUSH, MERGE
db, seed, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fingerprints = [n * 7919 - 50_000 for n in range(4000)]
random.Random(seed).shuffle(fingerprints)
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 60000")
open(f"{db}.{tag}", "w").close()
while not all(os.path.exists(f"{db}.{t}") for t in ("first", "second")):
    time.sleep(0.01)  # both start together
for batch in range(0, len(fingerprints), 100):
    found = fingerprints[batch : batch + 100]
    rows = [(f"http://a.test/{tag}/{fp}", fp, "a.test", "GET", "parse", None, None, 1, 0, None,
             1, "now") for fp in found]
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(statements.INSERT_REQUEST.sql, (json.dumps(rows),))
    if batch % 1000 == 500:
        for sql in FLUSH + MERGE:
            conn.execute(sql)
    elif batch % 300 == 0:
        for sql in FLUSH:
            conn.execute(sql)
    conn.execute("COMMIT")
    time.sleep(0.005)  # as a writer between batches: the other one takes the lock
"""


async def test_writers_in_two_processes_racing_on_the_same_urls_keep_one_request_each(
    tmp_path: Path,
) -> None:
    db = await new_database(tmp_path / "crawl.db")
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", RACER, str(db), str(seed), tag, cwd=ROOT
        )
        for seed, tag in ((1, "first"), (2, "second"))
    ]
    assert [await racer.wait() for racer in racers] == [0, 0]
    assert scalar(db, "SELECT count(*) FROM requests") == 4000
    racer = "substr(url, 15, instr(substr(url, 15), '/') - 1)"  # http://a.test/<tag>/
    by_racer = dict(rows(db, f"SELECT {racer}, count(*) FROM requests GROUP BY 1"))
    assert set(by_racer) == {"first", "second"}, by_racer  # both won some races
    assert scalar(db, "SELECT count(*) FROM fingerprints") > 0  # and merged in between
    assert_intact(db)


MERGER: Final = """
import sqlite3, sys
from crawler.store.fingerprints import MERGE
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("merging", flush=True)
for sql in MERGE:
    conn.execute(sql)
conn.execute("COMMIT")
print("merged", flush=True)
"""
MAIN: Final = 150_000
RECENT: Final = 150_000


@pytest.fixture(scope="module")
def unmerged() -> Iterator[Path]:
    """A crawl database whose set holds `MAIN` fingerprints in the main level and `RECENT`
    in the recent one, interleaved (even, odd), so that a merge writes every main page."""
    with tempfile.TemporaryDirectory() as tmp:
        db = asyncio.run(new_database(Path(tmp) / "unmerged.db"))
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute(_FILL, filled(MAIN, 0, 2))
            merge(conn)
            conn.execute(_FILL, filled(RECENT, 1, 2))
            run(conn, FLUSH)
        yield db


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05])
async def test_a_merge_killed_by_sigkill_leaves_the_set_as_it_was(
    unmerged: Path, tmp_path: Path, delay: float
) -> None:
    db = tmp_path / "crawl.db"
    shutil.copy(unmerged, db)
    merger = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MERGER, str(db), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert merger.stdout is not None
    assert await merger.stdout.readline() == b"merging\n"
    await asyncio.sleep(delay)
    merger.send_signal(signal.SIGKILL)
    rest = await merger.stdout.read()
    assert await merger.wait() == -signal.SIGKILL
    assert rest == b"", "the merge ended before the kill: make it larger"
    await new_database(db)  # opens it as a crawl would (recovers the WAL)
    assert scalar(db, "SELECT count(*) FROM fingerprints_recent") in (0, RECENT)
    assert scalar(db, "SELECT count(*) FROM requests") == MAIN + RECENT
    assert_intact(db)


async def test_a_version_8_file_gets_the_third_level_with_its_set_and_counts_intact(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as old:
        for script in MIGRATIONS[:8]:
            for statement in _statements(script):
                old.execute(statement)
        old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        old.execute("PRAGMA user_version = 8")
        old.execute(_FILL, filled(5, 0))  # into version 8's recent level
        old.execute(  # version 8's merge
            "INSERT INTO fingerprints SELECT * FROM fingerprints_recent ORDER BY fingerprint"
        )
        old.execute("UPDATE fingerprint_levels SET merged = merged + changes()")
        old.execute("DELETE FROM fingerprints_recent")
        old.execute(_FILL, filled(3, 100))
        old.execute(*refused_for_depth(1000))
    await new_database(db)  # migrates it
    assert scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
    assert rows(db, "SELECT merged, recent FROM fingerprint_levels") == [(5, 4)]
    assert_intact(db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for fp in (2, 101, 1000, 5000):  # in each old level, refused for depth, new
            conn.execute(*found_again(fp, depth=1, callback="again"))
    assert rows(db, "SELECT fingerprint FROM fingerprints_new") == [(5000,)]
    assert rows(db, "SELECT fingerprint FROM requests WHERE state = 'pending'") == [
        (1000,),
        (5000,),
    ]
    assert_intact(db)


def refused_for_depth(fingerprint: int) -> tuple[str, tuple[str]]:
    """`INSERT_SKIPPED` of one URL refused for depth, as SQL and its parameter."""
    row = (
        f"http://a.test/deep/{fingerprint}",
        fingerprint,
        "a.test",
        5,
        "depth",
        None,
        1,
        NOW,
        NOW,
    )
    return statements.INSERT_SKIPPED.sql, (json.dumps([row]),)
