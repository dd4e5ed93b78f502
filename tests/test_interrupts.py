"""Ctrl-C and SIGTERM stop `query`, `export`, `parse` and `record` with one line on stderr
and exit code 130, never a traceback, and leave nothing half done: an interrupted statement
changes nothing, an interrupted `export -o FILE` writes no FILE (an earlier one stays as it
was) and leaves no part file behind, and `parse` and `record` save nothing.

Real subprocesses receive real signals, each once the command has reached a point the test
can see: a request at the test's server, the database file open, rows written.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler.cli.main import _create_database
from tests.conftest import ROOT, RunCli, scalar
from tests.databases import Target, assert_intact, is_postgres, rows
from tests.pgserver import PostgresServer
from tests.results_site import copy_database, crawl_books_once
from tests.signals import as_a_background_job

STOPS = [
    pytest.param(signal.SIGINT, None, id="Ctrl-C"),
    pytest.param(signal.SIGTERM, None, id="SIGTERM"),
    pytest.param(signal.SIGTERM, as_a_background_job, id="SIGTERM, SIGINT ignored"),
]
FOREVER = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
"""A statement SQLite runs without end, and without returning to Python meanwhile."""
MANY_BOOKS = 200_000


async def start(
    *args: str, preexec: Callable[[], None] | None = None
) -> asyncio.subprocess.Process:
    """`python -m crawler ARGS`, as a terminal's foreground job unless `preexec` says else."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", *args,
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
        preexec_fn=preexec,
    )  # fmt: skip


async def until(condition: Callable[[], bool], limit: float = 60.0) -> None:
    """Wait until `condition()` holds: what another process did (files, /proc)."""
    async with asyncio.timeout(limit):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110 - another process's
            await asyncio.sleep(0.02)


async def ended(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait for `process` to end (killed if it takes a minute): its exit code and output."""
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(errors="replace"), stderr.decode()


def has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    wanted = str(path.resolve())
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == wanted:
                return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crawl_books_once(tmp_path_factory.mktemp("crawled") / "books.db")


@pytest.fixture(scope="module")
def many_books(crawled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The crawl with `MANY_BOOKS` more rows in its `book` table: an export that takes a
    while."""
    db = copy_database(crawled, tmp_path_factory.mktemp("many") / "books.db")
    with sqlite3.connect(db) as conn:
        columns = "title, price, availability, rating, upc, category, page_url, crawl_id, "
        columns += "request_id, created_at"
        conn.execute(
            f"INSERT INTO book ({columns}) "
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"SELECT b.title || ' ' || n.i, {columns.split(', ', 1)[1]} "
            f"FROM n, (SELECT * FROM book LIMIT 1) AS b",
            (MANY_BOOKS,),
        )
    conn.close()
    return db


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_a_query_stops_with_one_line(
    crawled: Path, tmp_path: Path, stop: signal.Signals, preexec: Callable[[], None] | None
) -> None:
    db = copy_database(crawled, tmp_path / "books.db")
    before = db.read_bytes()
    process = await start("query", str(db), FOREVER, preexec=preexec)
    await until(lambda: has_open(process.pid, db))
    process.send_signal(stop)
    code, stdout, stderr = await ended(process)
    assert (code, stderr) == (130, "query interrupted\n")
    assert stdout == ""
    assert db.read_bytes() == before


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_a_writing_query_interrupted_changes_nothing(
    crawled: Path, tmp_path: Path, stop: signal.Signals, preexec: Callable[[], None] | None
) -> None:
    db = copy_database(crawled, tmp_path / "books.db")
    prices = scalar(db, "SELECT group_concat(price) FROM book")
    endless = f"UPDATE book SET price = price + ({FOREVER})"
    process = await start("query", "--write", str(db), endless, preexec=preexec)
    await until(lambda: has_open(process.pid, db))
    process.send_signal(stop)
    code, _, stderr = await ended(process)
    assert (code, stderr) == (130, "query interrupted\n")
    assert scalar(db, "SELECT group_concat(price) FROM book") == prices
    assert_intact(db)


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_an_interrupted_export_writes_no_file(
    many_books: Path, tmp_path: Path, stop: signal.Signals, preexec: Callable[[], None] | None
) -> None:
    out = tmp_path / "books.jsonl"
    out.write_text("an earlier export\n")
    part = tmp_path / "books.jsonl.part"
    process = await start("export", str(many_books), "-t", "book", "-o", str(out), preexec=preexec)
    await until(lambda: part.exists() and part.stat().st_size > 0)
    # Stopped while the signal is sent: it comes mid-export, however fast the export runs.
    process.send_signal(signal.SIGSTOP)
    try:
        assert part.exists(), f"the export of {MANY_BOOKS:,} rows ended before it was stopped"
        process.send_signal(stop)
    finally:
        process.send_signal(signal.SIGCONT)
    code, _, stderr = await ended(process)
    assert (code, stderr) == (130, f"export interrupted: {out} was not written\n")
    assert out.read_text() == "an earlier export\n"
    assert os.listdir(tmp_path) == ["books.jsonl"]


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_an_export_to_a_pipe_stops_with_one_line(
    many_books: Path, stop: signal.Signals, preexec: Callable[[], None] | None
) -> None:
    process = await start("export", str(many_books), "-t", "book", "-f", "csv", preexec=preexec)
    assert process.stdout is not None
    first = await process.stdout.readexactly(100_000)
    assert first.startswith(b"item_id,")
    # Not read any further: the export soon waits for the pipe.
    process.send_signal(stop)
    code, stdout, stderr = await ended(process)
    assert (code, stderr) == (130, "export interrupted: the rows written to stdout stop short\n")
    assert (first.decode() + stdout).count("\n") < MANY_BOOKS


@pytest.fixture
async def hanging() -> AsyncIterator[tuple[BaseTestServer, asyncio.Event]]:
    """A server on 127.0.0.1 that answers no request (until the test ends), and an event set
    when the first request reaches it."""
    reached, release = asyncio.Event(), asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        reached.set()
        await release.wait()
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/{path:.*}", never)
    async with TestServer(app, host="127.0.0.1") as server:
        try:
            yield server, reached
        finally:
            release.set()


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_parse_stops_while_fetching_with_one_line(
    hanging: tuple[BaseTestServer, asyncio.Event],
    stop: signal.Signals,
    preexec: Callable[[], None] | None,
) -> None:
    server, reached = hanging
    url = str(server.make_url("/catalogue/a-book/index.html"))
    process = await start("parse", "books", url, "-c", "parse_book", preexec=preexec)
    async with asyncio.timeout(60):
        await reached.wait()
    process.send_signal(stop)
    code, stdout, stderr = await ended(process)
    assert (code, stderr) == (130, "parse interrupted\n")
    assert stdout == ""


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_record_stops_while_fetching_and_saves_nothing(
    hanging: tuple[BaseTestServer, asyncio.Event],
    tmp_path: Path,
    stop: signal.Signals,
    preexec: Callable[[], None] | None,
) -> None:
    server, reached = hanging
    fixtures = tmp_path / "fixtures"
    urls = [str(server.make_url(f"/page-{n}.html")) for n in range(3)]
    process = await start("record", "books", *urls, "-o", str(fixtures), preexec=preexec)
    async with asyncio.timeout(60):
        await reached.wait()
    process.send_signal(stop)
    code, stdout, stderr = await ended(process)
    assert (code, stderr) == (130, "record interrupted: no fixture was saved\n")
    assert stdout == ""
    assert not fixtures.exists()


SLOW_TO_CLOSE = """
import asyncio
from pathlib import Path

from tests.spiders import FollowAllSpider


class SlowToClose(FollowAllSpider):
    name = "follow_all"

    async def parse(self, response):
        Path({directory!r}, "parsing").touch()
        await asyncio.sleep(0.2)
        async for result in super().parse(response):
            yield result

    async def closed(self, reason):
        Path({directory!r}, "closing").touch()
        await asyncio.sleep(600)
"""
"""Says in files when it parses and when it is closed, and takes ten minutes to close."""


async def test_a_second_ctrl_c_while_a_reparse_stops_leaves_the_database_as_it_was(
    database: Target, follow_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    """In one process, on SQLite and PostgreSQL: the second Ctrl-C cuts the spider's
    `closed()` short, not the rollback (on PostgreSQL it comes after `closed()`)."""
    start_url = str(follow_site.make_url("/p/0"))
    done = await run_cli(
        "crawl", "tests/spiders.py:FollowAllSpider", "-o", str(database),
        "--start-url", start_url, "-s", "allow_private_addresses=true",
        "-s", "store_body=true", "-s", "progress_interval=60",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    before = rows(database, "SELECT id, type, data FROM items ORDER BY id")
    history = scalar(database, "SELECT count(*) FROM item_history")
    spider = tmp_path / "slow_to_close.py"
    spider.write_text(SLOW_TO_CLOSE.format(directory=str(tmp_path)))
    process = await start("reparse", str(spider), str(database), "-p", "1")
    await until((tmp_path / "parsing").exists)
    process.send_signal(signal.SIGINT)
    await until((tmp_path / "closing").exists)
    process.send_signal(signal.SIGINT)
    code, _, stderr = await ended(process)
    assert code == 130, stderr
    assert stderr.splitlines()[-1:] == ["reparse interrupted: nothing was changed; run it again"]
    assert "Traceback" not in stderr
    assert rows(database, "SELECT id, type, data FROM items ORDER BY id") == before
    assert scalar(database, "SELECT count(*) FROM item_history") == history
    assert_intact(database)
    if is_postgres(database):  # its connection closed, no transaction left open
        others = "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        others += "AND datname = current_database()"
        assert scalar(database, others) == 0


@pytest.mark.parametrize(("stop", "preexec"), STOPS)
async def test_a_query_on_postgresql_stops_with_one_line(
    postgres_server: PostgresServer, stop: signal.Signals, preexec: Callable[[], None] | None
) -> None:
    url = postgres_server.create_database()
    try:
        await asyncio.to_thread(make_crawl_schema, url)
        process = await start("query", url, "SELECT pg_sleep(600)", preexec=preexec)
        running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'"
        await until(lambda: scalar(url, running) == 1)
        process.send_signal(stop)
        code, _, stderr = await ended(process)
        assert (code, stderr) == (130, "query interrupted\n")
        # Cancelled on the server too, not left to run out its ten minutes there.
        await until(lambda: scalar(url, running) == 0, limit=30)
    finally:
        postgres_server.drop_database(url)


def make_crawl_schema(url: str) -> None:
    """Make `url` an (empty) crawl database."""
    asyncio.run(_create_database(url, fresh=False))
