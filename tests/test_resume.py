"""Interrupt a crawl in every way — Ctrl-C, kill -9 at several moments — resume, lose nothing.

Each test runs the crawler as a real subprocess against a local server and compares the final
pages and items with those of an uninterrupted crawl (into a SQLite file). Those that matter for
both backends run on a SQLite file and on a PostgreSQL database (the `database` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from tests import sites
from tests.conftest import ROOT, Target, rows, scalar
from tests.databases import assert_intact, is_postgres

PAGES = 240


def tree_app(pages: int = PAGES, delay: float = 0.02) -> web.Application:
    """The binary tree of test pages, each also linking back to its parent."""
    return sites.tree_app(pages, delay, link_parent=True)


@pytest.fixture
async def tree() -> AsyncIterator[BaseTestServer]:
    async with TestServer(tree_app(), host="127.0.0.1") as server:
        yield server


def crawl_args(server: BaseTestServer, db: Target) -> list[str]:
    return [
        "-m",
        "crawler",
        "crawl",
        "tests.spiders:BurstSpider",
        "-o",
        str(db),
        "--start-url",
        str(server.make_url("/p/0")),
        "--concurrency",
        "4",
        "-s",
        "write_batch_size=50",
        "-s",
        "autothrottle=false",  # the site's artificial latency would slow every host down
    ]


async def start_crawl(server: BaseTestServer, db: Target) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *crawl_args(server, db),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_to_end(server: BaseTestServer, db: Target) -> None:
    process = await start_crawl(server, db)
    async with asyncio.timeout(90):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


def snapshot(db: Target) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """Pages by URL and items by (page URL, data) — with counts, so duplicates show. The
    data as JSON with sorted keys: PostgreSQL's jsonb orders them its own way."""
    pages = Counter(str(r[0]) for r in rows(db, "SELECT url FROM pages"))
    items = Counter(
        (str(r[0]), json.dumps(json.loads(r[1]), sort_keys=True))
        for r in rows(db, "SELECT page_url, data FROM items")
    )
    return pages, items


def exists(db: Target) -> bool:
    """Whether the crawl has begun to store: the SQLite file exists, or PostgreSQL's
    database has the `pages` table."""
    if not is_postgres(db):
        return Path(db).exists()
    try:
        return scalar(db, "SELECT to_regclass('pages') IS NOT NULL") is True
    except (asyncpg.PostgresError, OSError):
        return False


def count_pages(db: Target) -> int:
    if not is_postgres(db):
        if not Path(db).exists():
            return -1
        try:
            with sqlite3.connect(db, timeout=0.2) as conn:
                return int(conn.execute("SELECT count(*) FROM pages").fetchone()[0])
        except sqlite3.Error:
            return -1
    try:
        return int(scalar(db, "SELECT count(*) FROM pages"))
    except (asyncpg.PostgresError, OSError):  # not created yet
        return -1


def wal_size(wal: Path) -> int:
    return wal.stat().st_size if wal.exists() else 0


async def wait_until(condition: Callable[[], bool], limit: float = 30) -> None:
    async with asyncio.timeout(limit):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110 - another process's file
            await asyncio.sleep(0.02)


@pytest.fixture
async def reference(
    tree: BaseTestServer, tmp_path: Path
) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """The pages and items of one uninterrupted crawl."""
    db = tmp_path / "reference.db"
    await run_to_end(tree, db)
    pages, items = snapshot(db)
    assert len(pages) == PAGES and sum(items.values()) == PAGES * 20
    return pages, items


async def test_sigint_then_resume_equals_an_uninterrupted_crawl(
    tree: BaseTestServer, database: Target, reference: tuple[Counter[str], Counter[tuple[str, str]]]
) -> None:
    db = database
    process = await start_crawl(tree, db)
    await wait_until(lambda: count_pages(db) >= 60)
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        await process.communicate()
    assert process.returncode == 130
    assert scalar(db, "SELECT status FROM crawls") == "interrupted"
    assert count_pages(db) < PAGES
    await run_to_end(tree, db)
    assert snapshot(db) == reference
    assert_intact(db)


Moment = Callable[[Target], bool]
MOMENTS: dict[str, Moment] = {
    "as soon as the database exists": exists,
    "after the first pages": lambda db: count_pages(db) >= 5,
    "early in the crawl": lambda db: count_pages(db) >= 30,
    "mid-crawl": lambda db: count_pages(db) >= 110,
    "late in the crawl": lambda db: count_pages(db) >= 200,
}


@pytest.mark.parametrize("moment", list(MOMENTS))
async def test_kill_9_then_resume_loses_nothing(
    moment: str,
    tree: BaseTestServer,
    database: Target,
    reference: tuple[Counter[str], Counter[tuple[str, str]]],
) -> None:
    db = database
    process = await start_crawl(tree, db)
    await wait_until(lambda: MOMENTS[moment](db))
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL
    if exists(db):
        assert_intact(db)
    await run_to_end(tree, db)
    assert snapshot(db) == reference
    assert_intact(db)
    statuses = [r[0] for r in rows(db, "SELECT status FROM crawls ORDER BY id")]
    assert statuses[-1] == "finished"
    assert statuses[:-1] in ([], ["crashed"])


async def test_kill_9_during_a_write_burst_then_resume(
    tree: BaseTestServer, tmp_path: Path, reference: tuple[Counter[str], Counter[tuple[str, str]]]
) -> None:
    """Kill while the writer is committing: wait for a write lock (a -wal growing)."""
    db = tmp_path / "burst.db"
    wal = Path(f"{db}-wal")
    process = await start_crawl(tree, db)
    await wait_until(lambda: count_pages(db) >= 40)
    size = await asyncio.to_thread(wal_size, wal)
    await wait_until(lambda: wal_size(wal) not in (0, size))
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()
    assert scalar(db, "PRAGMA integrity_check") == "ok"
    # a page is never marked done without its items: committed together
    assert (
        scalar(
            db,
            "SELECT count(*) FROM requests r WHERE state = 'done' AND "
            "(SELECT count(*) FROM items i WHERE i.request_id = r.id) != 20",
        )
        == 0
    )
    await run_to_end(tree, db)
    assert snapshot(db) == reference
