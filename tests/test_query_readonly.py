"""`crawler query` without `--write` reads and writes nothing: no statement changes any file.

Each refused statement exits 2 with one line and leaves the directory as it was: the same
files, the database's bytes unchanged. The baseline is taken after a first read-only open,
because SQLite makes a WAL database's `-wal` and `-shm` files for any reader when they are
missing (and `-shm`, shared memory between connections, is left out of the comparison).
The many statements run in this process (click's CliRunner), a few again as subprocesses.
The read-side commands (status, stats, export) open the file the same way.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner

from crawler.cli.main import cli
from crawler.cli.readonly import open_crawl_database, open_read_only
from tests.conftest import ROOT, CliResult, RunCli, scalar
from tests.results_site import copy_database, crawl_books_once

REFUSED: Final = [
    ("ATTACH DATABASE '{dir}/attached.db' AS other", "ATTACH or VACUUM INTO"),
    ("VACUUM", "VACUUM rewrites"),
    ("VACUUM INTO '{dir}/copy.db'", "ATTACH or VACUUM INTO would create or write"),
    ("PRAGMA journal_mode = delete", "PRAGMA journal_mode = delete"),
    ("PRAGMA user_version = 5", "PRAGMA user_version = 5"),
    ("PRAGMA main.application_id = 1", "PRAGMA application_id = 1"),
    ("PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA wal_checkpoint"),
    ("PRAGMA optimize", "PRAGMA optimize"),
    ("SELECT load_extension('{dir}/extension')", "load_extension()"),
    ("INSERT INTO book (title) VALUES ('x')", "INSERT INTO book"),
    ("UPDATE book SET price = 0", "UPDATE book"),
    ("DELETE FROM pages", "DELETE FROM pages"),
    ("REPLACE INTO crawls (id) VALUES (1)", "INSERT INTO crawls"),
    ("CREATE TABLE notes (x)", "CREATE"),
    ("CREATE TEMP TABLE notes (x)", "CREATE TEMP"),
    ("CREATE INDEX pages_url ON pages (url)", "CREATE"),
    ("CREATE VIEW cheap AS SELECT * FROM book WHERE price < 10", "CREATE"),
    ("DROP TABLE links", "DROP"),
    ("ALTER TABLE pages ADD COLUMN note TEXT", "ALTER TABLE pages"),
    ("REINDEX", "REINDEX"),
    ("ANALYZE", "ANALYZE"),
]

READS: Final = [
    "PRAGMA table_info(pages)",
    "SELECT name FROM pragma_table_info('book')",
    "PRAGMA user_version",
    "PRAGMA journal_mode",
    "PRAGMA integrity_check",
    "SELECT value FROM json_each('[1, 2]')",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT i FROM n",
]


def readme_queries() -> list[str]:
    """The statements of the README's example queries."""
    (block,) = re.findall(
        r"Example queries:\n\n```sql\n(.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    statements: list[str] = []
    current = ""
    for line in block.splitlines(keepends=True):
        if not line.startswith("--"):
            current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crawl_books_once(tmp_path_factory.mktemp("crawled") / "books.db")


@pytest.fixture
def books_db(crawled: Path, tmp_path: Path) -> Path:
    """A copy of the crawl, alone in its directory, opened once read-only (see above)."""
    db = copy_database(crawled, tmp_path / "books.db")
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.execute("SELECT count(*) FROM pages").fetchone()
    return db


def invoke(*args: str) -> CliResult:
    """Run the command line in this process."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def assert_refused(result: CliResult, reason: str) -> None:
    """Exit 2 and one line: read-only, why, and what to do."""
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the database is open read-only ("), result.stderr
    assert reason in lines[0] and "add --write" in lines[0], result.stderr


def files(directory: Path) -> dict[str, bytes]:
    """The files of `directory` and their bytes, but for the WAL index (`-shm`)."""
    return {
        path.name: b"" if path.name.endswith("-shm") else path.read_bytes()
        for path in sorted(directory.iterdir())
    }


@pytest.mark.parametrize(("sql", "reason"), REFUSED, ids=[sql for sql, _ in REFUSED])
def test_a_statement_that_would_write_is_refused_and_nothing_changes(
    sql: str, reason: str, books_db: Path
) -> None:
    before = files(books_db.parent)
    assert_refused(invoke("query", str(books_db), sql.format(dir=books_db.parent)), reason)
    assert files(books_db.parent) == before


async def test_refusals_in_a_real_process(books_db: Path, run_cli: RunCli) -> None:
    before = files(books_db.parent)
    for sql, reason in [REFUSED[0], REFUSED[2], REFUSED[4], REFUSED[10]]:
        result = await run_cli("query", str(books_db), sql.format(dir=books_db.parent))
        assert_refused(result, reason)
    assert files(books_db.parent) == before


def test_reads_run_including_the_readmes_example_queries(books_db: Path) -> None:
    examples = readme_queries()
    assert len(examples) >= 7
    before = files(books_db.parent)
    for sql in [*READS, *examples]:
        result = invoke("query", str(books_db), sql, "-f", "json")
        assert result.code == 0, (sql, result.stderr)
        assert result.stdout.startswith("["), (sql, result.stdout)
    assert files(books_db.parent) == before


async def test_with_write_the_statements_run_as_before(books_db: Path, run_cli: RunCli) -> None:
    for sql in ("PRAGMA user_version = 5", "DELETE FROM links", "VACUUM"):
        result = await run_cli("query", str(books_db), sql, "--write")
        assert result.code == 0, (sql, result.stderr)
    assert scalar(books_db, "PRAGMA user_version") == 5
    assert scalar(books_db, "SELECT count(*) FROM links") == 0
    attached = books_db.parent / "attached.db"
    result = await run_cli("query", str(books_db), f"ATTACH '{attached}' AS other", "--write")
    assert result.code == 0, result.stderr
    assert attached.exists()


async def test_status_stats_and_export_change_nothing(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    before = files(books_db.parent)
    for args in (["status"], ["stats"], ["export", "-t", "book", "-o", "-"]):
        result = await run_cli(args[0], str(books_db), *args[1:])
        assert result.code == 0, (args, result.stderr)
    assert files(books_db.parent) == before


@pytest.mark.parametrize("opener", [open_read_only, open_crawl_database])
def test_the_read_side_connections_cannot_write(
    opener: Callable[[Path], sqlite3.Connection], books_db: Path
) -> None:
    with closing(opener(books_db)) as conn:
        for sql in ("UPDATE book SET price = 0", f"ATTACH '{books_db}.2' AS b", "VACUUM"):
            with pytest.raises(sqlite3.DatabaseError):
                conn.execute(sql)
        conn.set_authorizer(None)  # and below the guard, the file is open read-only
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("UPDATE book SET price = 0")
