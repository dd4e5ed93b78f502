"""Start-up loads what the command needs: asyncpg and the PostgreSQL modules are imported
where a PostgreSQL URL is opened (crawler.store.pg_url), not by a crawl of a SQLite file or
a command without a database (they were ~90M instructions of every command's start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from tests.conftest import ROOT

_PROBE: Final = """
import atexit, sys

def report() -> None:
    loaded = [m for m in sys.modules if m.split(".")[0] == "asyncpg" or ".pg_" in m]
    print("loaded:", " ".join(sorted(loaded)), file=sys.stderr)

atexit.register(report)
from crawler.cli.main import main
sys.argv[0] = "crawler"
main()
"""
"""`python -m crawler ARGS`, saying at exit which PostgreSQL modules were imported."""


def loaded(*args: str, cwd: Path) -> tuple[int, set[str]]:
    """Run the command line with `args`; its exit code and the PostgreSQL modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("loaded:"))
    return done.returncode, set(line.split()[1:])


def test_sqlite_crawls_and_commands_without_a_url_do_not_load_asyncpg(tmp_path: Path) -> None:
    db = str(tmp_path / "demo.db")
    commands = [
        ["--help"],
        ["list"],
        ["demo", "-o", db, "--books", "5"],  # a crawl of the bundled site into a SQLite file
        ["status", db],
        ["stats", db],
        ["query", db, "SELECT count(*) FROM pages"],
        ["export", db, "-t", "book", "-o", str(tmp_path / "books.csv")],
    ]
    for args in commands:
        code, modules = loaded(*args, cwd=tmp_path)
        assert (args, code, modules) == (args, 0, {"crawler.store.pg_url"})
    assert (tmp_path / "books.csv").read_text(encoding="utf-8").count("\n") == 6


def test_a_postgresql_url_loads_asyncpg(tmp_path: Path) -> None:
    # Nothing listens on port 1: the command fails, after importing what a URL needs.
    code, modules = loaded("status", "postgresql://127.0.0.1:1/crawl", cwd=tmp_path)
    assert code != 0
    assert {"asyncpg", "crawler.store.pg_read", "crawler.store.pg_schema"} <= modules
