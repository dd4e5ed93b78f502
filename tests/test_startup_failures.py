"""The crawl database is unusable when a command starts: one line on stderr, never a traceback.

A full disk, a read-only file, a file that is not a database and a database of a newer
schema, met by `crawler crawl` (one process and `--processes 2`) and by the read-side
commands. The storage failing (full, read-only, I/O error) exits 1, as it does mid-crawl
(tests/test_storage_failures.py); a wrong file exits 2, like other bad input.

A full disk is `RLIMIT_FSIZE` in the child (writes past N bytes fail with EFBIG, SIGXFSZ
ignored): mounting a small filesystem, as the mid-crawl tests do, needs root. A read-only
file is `chattr +i` as root (root writes through file permissions), `chmod 444` otherwise.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Final

import pytest

from crawler.store.schema import SCHEMA_VERSION, open_database
from tests.conftest import ROOT

START: Final = ("--start-url", "http://127.0.0.1:9/", "-s", "max_retries=0")
"""A start URL that fails at once: these crawls are about the file, not the site."""


def run_cli(*args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m crawler ARGS`, with writes past `file_size_limit` bytes failing."""

    def limit_file_size() -> None:
        assert file_size_limit is not None
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "crawler", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=None if file_size_limit is None else limit_file_size,
        timeout=60,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Exit `code`, and stderr is one `error: ` line holding every fragment; return it."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr
    return lines[0]


def files(directory: Path) -> dict[str, bytes]:
    """Every file in `directory` with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def crawl(db: Path, *args: str) -> list[str]:
    return ["crawl", "site", "-o", str(db), *START, *args]


def create_database(db: Path) -> int:
    """Create an empty crawl database at `db`; return the size of its WAL once the schema is
    committed (what a crawl has written before it starts its run)."""

    async def create() -> int:
        conn = await open_database(db)
        try:
            return await asyncio.to_thread(os.path.getsize, f"{db}-wal")
        finally:
            await conn.close()

    return asyncio.run(create())


@pytest.fixture
def crawl_db(tmp_path: Path) -> Path:
    """An empty crawl database, closed (no -wal or -shm file beside it)."""
    db = tmp_path / "crawl.db"
    create_database(db)
    return db


def test_a_full_disk_while_creating_the_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    schema_size = create_database(tmp_path / "measure.db")
    assert schema_size > 2 * 32 * 1024  # half of it still holds the WAL index (32 KiB)
    for limit, stage in [(0, "open"), (schema_size // 2, "write")]:
        db = tmp_path / f"limit-{limit}.db"
        result = run_cli(*crawl(db), file_size_limit=limit)
        assert_one_line(result, 1, f"cannot {stage} {db}: ")


def test_a_full_disk_when_the_run_starts_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # Room for the schema, not for the run's first row: open_database succeeds, and the
    # run's first transaction (crawler.store.runs) meets the full disk.
    db = tmp_path / "crawl.db"
    schema_size = create_database(tmp_path / "measure.db")
    result = run_cli(*crawl(db), file_size_limit=schema_size + 100)
    assert_one_line(result, 1, f"cannot write {db}: ")
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM crawls").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = run_cli(*crawl(db))  # with room again, the same command runs to its end:
    # exit 1 only because nothing listens at the start URL (every start request failed)
    assert resumed.returncode == 1, resumed.stderr
    assert "every start request failed" in resumed.stderr


def test_a_full_disk_under_an_existing_database_is_one_line_and_exit_1(crawl_db: Path) -> None:
    # Even reading a WAL database writes its index file (-shm) when there is none.
    before = files(crawl_db.parent)
    assert_one_line(run_cli(*crawl(crawl_db), file_size_limit=0), 1, f"cannot open {crawl_db}")
    assert_one_line(run_cli("status", str(crawl_db), file_size_limit=0), 1, "cannot read")
    assert_one_line(run_cli("stats", str(crawl_db), file_size_limit=0), 1, "cannot read")
    assert files(crawl_db.parent)[crawl_db.name] == before[crawl_db.name]


@pytest.fixture
def read_only(crawl_db: Path) -> Iterator[Path]:
    """`crawl_db`, made read-only in a way that holds for this user."""
    if os.geteuid() != 0:
        crawl_db.chmod(0o444)
        yield crawl_db
        crawl_db.chmod(0o644)
        return
    if shutil.which("chattr") is None:
        pytest.skip("root writes through file permissions, and there is no chattr")
    made = subprocess.run(["chattr", "+i", str(crawl_db)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {made.stderr.decode().strip()}")
    try:
        yield crawl_db
    finally:
        subprocess.run(["chattr", "-i", str(crawl_db)], check=True)


def test_a_read_only_database_file_is_one_line_and_exit_1(read_only: Path) -> None:
    data = read_only.read_bytes()
    for processes in ("1", "2"):
        result = run_cli(*crawl(read_only, "--processes", processes))
        assert_one_line(result, 1, f"cannot write {read_only}: ", "read-only")
    written = run_cli("query", str(read_only), "DELETE FROM crawls", "--write")
    assert_one_line(written, 1, f"cannot write {read_only}: ", "read-only")
    assert read_only.read_bytes() == data
    status = run_cli("status", str(read_only))  # reading it works
    assert status.returncode == 0, status.stderr


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def text(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 50)


@pytest.mark.parametrize("make", [random_bytes, text], ids=["random bytes", "text"])
def test_a_file_that_is_not_a_database_is_one_line_and_exit_2(
    make: Callable[[Path], None], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.db"
    make(notes)
    before = files(tmp_path)
    commands = [
        crawl(notes),
        crawl(notes, "--processes", "2"),
        ["status", str(notes)],
        ["stats", str(notes)],
        ["export", str(notes), "-t", "book"],
        ["query", str(notes), "SELECT 1"],
    ]
    for args in commands:
        assert_one_line(run_cli(*args), 2, f"{notes} is not a crawl database")
    assert files(tmp_path) == before  # not even a -wal file beside it


def test_a_database_of_a_newer_schema_is_one_line_and_exit_2(crawl_db: Path) -> None:
    with closing(sqlite3.connect(crawl_db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = files(crawl_db.parent)
    newer = f"has schema version {SCHEMA_VERSION + 1}, newer than this crawler's {SCHEMA_VERSION}"
    for args in (
        crawl(crawl_db),
        crawl(crawl_db, "--processes", "2"),
        ["status", str(crawl_db)],
        ["stats", str(crawl_db)],
        ["export", str(crawl_db), "-t", "book"],
    ):
        assert_one_line(run_cli(*args), 2, newer)
    assert files(crawl_db.parent)[crawl_db.name] == before[crawl_db.name]


def test_a_directory_is_not_a_database_file(tmp_path: Path) -> None:
    assert_one_line(run_cli(*crawl(tmp_path)), 2, f"{tmp_path} is a directory")
