"""docs/querying.md stays true: every SQL block runs, and returns rows, on a real crawl database,
and every `crawler` command line in it runs."""

from __future__ import annotations

import re
import shlex
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunCli
from tests.results_site import BOOKS, copy_database, crawl_books_once

DOC = ROOT / "docs" / "querying.md"


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def command_lines() -> list[list[str]]:
    """The `crawler …` lines of the doc's shell blocks, without their comments."""
    lines: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("crawler "):
                lines.append(shlex.split(line.split("  #", 1)[0])[1:])
    return lines


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crawl_books_once(tmp_path_factory.mktemp("crawled") / "books.db")


def test_the_doc_has_at_least_ten_queries() -> None:
    assert len(sql_blocks()) >= 10


@pytest.mark.parametrize("sql", sql_blocks(), ids=lambda sql: sql.split("\n")[0][:60])
def test_every_query_runs_and_finds_rows(crawled: Path, sql: str) -> None:
    with sqlite3.connect(f"file:{crawled}?mode=ro", uri=True) as conn:
        found = conn.execute(sql).fetchall()
    conn.close()
    assert found, f"no rows from:\n{sql}"


async def test_every_command_line_runs(crawled: Path, tmp_path: Path, run_cli: RunCli) -> None:
    copy_database(crawled, tmp_path / "books.db")  # the doc's commands use ./books.db
    commands = command_lines()
    assert {args[0] for args in commands} == {"query", "export", "stats"}
    for args in commands:
        result = await run_cli(*args, cwd=tmp_path)
        assert result.code == 0, (args, result.stderr)
    assert line_count(tmp_path / "books.jsonl") == BOOKS


def line_count(path: Path) -> int:
    with path.open() as f:
        return sum(1 for _ in f)
