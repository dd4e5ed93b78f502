"""The fingerprint set of a SQLite file in two levels (crawler.store.fingerprints): a set under
any mix of inserts and merges, one request per fingerprint across processes, merges that a
kill -9 leaves whole or undone, and the merge policy."""

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
from crawler.store.fingerprints import MERGE, MERGE_AT_LEAST, MERGE_FRACTION, merge_due
from crawler.store.schema import open_database
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


def merge(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for sql in MERGE:
        conn.execute(sql)
    conn.execute("COMMIT")


operations = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["skipped", "pending"]),
            st.lists(st.one_of(st.sampled_from(EDGES), st.integers(-20, 20)), max_size=12),
        ),
        st.just(("merge", [])),
    ),
    max_size=12,
)


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
                if kind == "merge":
                    merge(conn)
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


async def test_a_merge_moves_the_recent_level_in_order(tmp_path: Path) -> None:
    db = await new_database(tmp_path / "crawl.db")
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute(statements.INSERT_SKIPPED.sql, (json.dumps(skipped_rows([5, -3, 9], "a")),))
        merge(conn)
        conn.execute(statements.INSERT_SKIPPED.sql, (json.dumps(skipped_rows([7, 5, 2], "b")),))
    assert rows(db, "SELECT fingerprint FROM fingerprints ORDER BY rowid") == [(-3,), (5,), (9,)]
    assert rows(db, "SELECT fingerprint FROM fingerprints_recent") == [(2,), (7,)]
    assert scalar(db, "SELECT merged FROM fingerprint_levels") == 3
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


async def test_a_merge_is_due_when_the_recent_level_is_a_fraction_of_the_main_one(
    tmp_path: Path,
) -> None:
    db = await new_database(tmp_path / "crawl.db")
    conn = await open_database(db)
    try:
        await conn.execute(_FILL, filled(MERGE_AT_LEAST - 1, 0))
        assert not await merge_due(conn)
        await conn.execute(_FILL, filled(1, MERGE_AT_LEAST))
        assert await merge_due(conn)  # the least a merge moves, into an empty main level
        # a main level this size (as merges would have counted it): the fraction decides
        main = int(MERGE_AT_LEAST / MERGE_FRACTION) * 2
        await conn.execute("UPDATE fingerprint_levels SET merged = ?", (main,))
        assert not await merge_due(conn)
        await conn.execute(_FILL, filled(MERGE_AT_LEAST - 1, 10**9))
        assert not await merge_due(conn)
        await conn.execute(_FILL, filled(1, 2 * 10**9))
        assert await merge_due(conn)
    finally:
        await conn.close()


RACER: Final = """
import json, os, random, sqlite3, sys, time
from crawler.store import statements
from crawler.store.fingerprints import MERGE
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
    conn.execute(statements.REOPEN_DEPTH_SKIPS.sql, (json.dumps(rows),))
    conn.execute(statements.INSERT_REQUEST.sql, (json.dumps(rows),))
    if batch % 1000 == 500:
        for sql in MERGE:
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
