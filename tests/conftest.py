"""Shared fixtures: local sites on loopback, database paths, and running the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer, TestServer

from tests.sites import follow_app

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CliResult:
    """What a `crawler` subprocess printed and how it exited."""

    code: int
    stdout: str
    stderr: str


RunCli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database path in the test's temporary directory."""
    return tmp_path / "crawl.db"


@pytest.fixture
async def follow_site() -> AsyncIterator[BaseTestServer]:
    """A link graph of 60 pages on 127.0.0.1 (see tests.sites.follow_app)."""
    async with TestServer(follow_app(pages=60), host="127.0.0.1") as server:
        yield server


async def run_crawler(
    *args: str, cwd: Path | None = None, limit: float = 60.0, env: dict[str, str] | None = None
) -> CliResult:
    """Run `python -m crawler ARGS` without blocking the loop that serves the test sites."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        *args,
        cwd=cwd or ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
def run_cli() -> RunCli:
    """Run the `crawler` command line as a real subprocess (see run_crawler)."""
    return run_crawler


def rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a query against a crawl database file and return all rows."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(db: Path, sql: str, params: tuple[object, ...] = ()) -> Any:
    """Run a query that returns one value."""
    result = rows(db, sql, params)
    return result[0][0] if result else None
