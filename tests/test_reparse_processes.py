"""`crawler reparse --processes N`: worker processes store exactly what one process stores,
Ctrl-C and dying workers change nothing, progress is shown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from crawler.demo import catalogue_app
from tests.conftest import ROOT, RunCli, run_crawler, scalar
from tests.databases import assert_intact
from tests.reparse_pages import add_hostile_pages, outcome, write_spider
from tests.results_site import copy_database
from tests.signals import as_a_background_job, delivered, ignored
from tests.test_interrupts import until
from tests.test_reparse import upper_spider

CATALOGUE_BOOKS = 300
"""Books in the crawled catalogue: 339 pages with bodies, four chunks of 100."""
PROGRESS = re.compile(r"reparse: [\d,]+/[\d,]+ pages \(\d+%\), [\d,.]+ pages/s, ETA \S+")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("catalogue") / "books.db"

    async def main() -> None:
        async with TestServer(catalogue_app(book_count=CATALOGUE_BOOKS), host="127.0.0.1") as s:
            result = await run_crawler(
                "crawl", "books", "-o", str(db), "-s", "store_body=true",
                "--start-url", str(s.make_url("/")),
            )  # fmt: skip
            assert result.code == 0, result.stderr

    asyncio.run(main())
    return db


@pytest.fixture(scope="module")
def hostile(catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = copy_database(catalogue, tmp_path_factory.mktemp("hostile") / "hostile.db")
    add_hostile_pages(db, filler=2200)  # 2,779 pages: workers get chunks of 300 pages
    return db


async def reparse_json(run_cli: RunCli, spider: Path | str, db: Path, *args: str) -> Any:
    result = await run_cli("reparse", str(spider), str(db), "-f", "json", *args)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    del summary["processes"]
    return summary


async def reparse_in(
    run_cli: RunCli, source: Path, spider: Path, tmp_path: Path, processes: int
) -> tuple[Any, dict[str, Any]]:
    """Reparse a copy of `source` in `processes` processes: the summary and what it stored."""
    db = copy_database(source, tmp_path / f"p{processes}.db")
    summary = await reparse_json(run_cli, spider, db, "--processes", str(processes))
    return summary, outcome(db)


async def test_processes_store_what_one_process_stores_on_the_catalogue(
    catalogue: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    spider = upper_spider(tmp_path, dedupe=("title",), copies=2)
    one = await reparse_in(run_cli, catalogue, spider, tmp_path, 1)
    assert one[0]["items_by_type"] == {"book": CATALOGUE_BOOKS}
    assert one[0]["items_dropped"] == {"duplicate": CATALOGUE_BOOKS}
    assert one[1]["items"] != outcome(catalogue)["items"]  # the reparse did change them
    for processes in (2, 3):
        assert await reparse_in(run_cli, catalogue, spider, tmp_path, processes) == one


async def test_processes_store_what_one_process_stores_on_hostile_pages(
    hostile: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    spider = write_spider(tmp_path)
    summary, stored = await reparse_in(run_cli, hostile, spider, tmp_path, 1)
    # The set is as hostile as it claims: every kind of failure is there.
    # truncated, not gzip, status 500, a PDF, a request whose meta is not JSON
    assert summary["not_parsed"] == 5 * 16
    assert summary["items_dropped"] == {"duplicate": 15, "invalid": 16}
    assert summary["errors"] == {"item": 32, "spider": 64}
    assert summary["requests_not_crawled"] > 16 * 6000  # spilled floods included
    messages = [str(row[5]) for row in stored["errors"]]
    for expected, count in {
        "RuntimeError: boom": 16,  # raised after yielding: the item before it is kept
        "has no callback named 'parse_renamed'": 16,
        "meta is not JSON-serialisable": 16,  # on every page that yields it, whatever came before
        "cannot be stored as JSON": 32,
        "expected an item": 16,
    }.items():
        assert sum(expected in message for message in messages) == count, expected
    assert await reparse_in(run_cli, hostile, spider, tmp_path, 2) == (summary, stored)


async def test_a_spider_stopping_in_a_worker_stops_as_in_one_process(
    catalogue: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    before = outcome(catalogue)
    title = str(scalar(catalogue, "SELECT title FROM book ORDER BY item_id LIMIT 1 OFFSET 250"))
    spider = write_spider(tmp_path, stop_at=title)
    one = await reparse_in(run_cli, catalogue, spider, tmp_path, 1)
    assert one[0]["stopped"] == f"stopped at {title} (nothing was changed)"
    assert 200 < one[0]["pages"] < 339
    assert one[1] == before
    assert await reparse_in(run_cli, catalogue, spider, tmp_path, 2) == one


async def test_a_dying_worker_fails_the_reparse_and_changes_nothing(
    catalogue: Path, tmp_path: Path
) -> None:
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = write_spider(tmp_path, exit_in_worker=True)
    result = await run_crawler(
        "reparse", str(spider), str(db), "-p", "2", env={"CRAWLER_TEST_EXIT": "1"}
    )
    assert result.code == 1, result.stderr
    assert "error: a reparse worker process died" in result.stderr
    assert "nothing was changed" in result.stderr
    assert outcome(db) == outcome(catalogue)
    assert scalar(db, "PRAGMA integrity_check") == "ok"


def workers_of(pid: int) -> list[int]:
    """The reparse's worker processes (not multiprocessing's resource tracker)."""
    return [
        child
        for child in descendants(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            children = [int(child) for child in task.read_text().split()]
            found += children
            queue += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def all_ended(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


async def started_reparse(
    spider: Path, db: Path, *args: str, preexec: Callable[[], None] | None = None
) -> AsyncGenerator[asyncio.subprocess.Process, None]:
    """A reparse of `db` whose progress shows parsed pages: yielded, then killed if alive.
    Started as a terminal's foreground job (tests/conftest.py), unless `preexec` says else."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "reparse", str(spider), str(db),
        "-s", "progress_interval=0.2", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(60):
            while not re.search(rb"reparse: [1-9][\d,]*/", await process.stderr.readline()):
                pass
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("stop", "processes"), [(signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 2)]
)
async def test_ctrl_c_stops_the_workers_and_changes_nothing(
    catalogue: Path, tmp_path: Path, stop: signal.Signals, processes: int
) -> None:
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = write_spider(tmp_path, delay=0.02)
    reparses = started_reparse(spider, db, "-p", str(processes))
    process = await anext(reparses)
    assert signal.SIGINT not in ignored(process.pid)  # a terminal's foreground job
    workers = workers_of(process.pid)
    assert len(workers) == (0 if processes == 1 else processes)
    others = descendants(process.pid)
    process.send_signal(stop)
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 130, stderr
    assert b"reparse interrupted: nothing was changed" in stderr
    assert b"Traceback" not in stderr
    assert not [pid for pid in workers if alive(pid)]  # ended before the reparse did
    assert await asyncio.to_thread(all_ended, others, 10.0)
    assert outcome(db) == outcome(catalogue)
    assert scalar(db, "PRAGMA integrity_check") == "ok"
    await reparses.aclose()


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigterm_stops_a_reparse_started_with_sigint_ignored(
    catalogue: Path, tmp_path: Path, processes: int
) -> None:
    """A script's background job (`crawler reparse ... &`) ignores SIGINT: SIGTERM alone
    stops it, as Ctrl-C does, and changes nothing."""
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = write_spider(tmp_path, delay=0.02)
    reparses = started_reparse(spider, db, "-p", str(processes), preexec=as_a_background_job)
    process = await anext(reparses)
    assert signal.SIGINT in ignored(process.pid)
    workers = workers_of(process.pid)
    assert len(workers) == (0 if processes == 1 else processes)
    others = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 130, stderr
    assert b"reparse interrupted: nothing was changed" in stderr
    assert b"Traceback" not in stderr
    assert not [pid for pid in workers if alive(pid)]
    assert await asyncio.to_thread(all_ended, others, 10.0)
    assert outcome(db) == outcome(catalogue)
    assert_intact(db)
    await reparses.aclose()


BLOCKING_SPIDER = """
import os
import time
from pathlib import Path

from spiders.books import BooksSpider


class BlockingBooks(BooksSpider):
    name = "books"
    allowed_domains = ("127.0.0.1",)

    async def parse_book(self, response):
        Path({directory!r}, f"blocked-{{os.getpid()}}").touch()
        time.sleep(600)
        async for book in super().parse_book(response):
            yield book
"""
"""Its first book page blocks each worker for ten minutes, after saying so in a file."""


async def test_a_second_ctrl_c_stops_the_workers_at_once_and_changes_nothing(
    catalogue: Path, tmp_path: Path
) -> None:
    """The first Ctrl-C gives the workers `shutdown_grace` seconds to finish their chunk;
    a second one, meanwhile, stops them at once; the rollback still runs to its end."""
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = tmp_path / "blocking_books.py"
    spider.write_text(BLOCKING_SPIDER.format(directory=str(tmp_path)))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "reparse", str(spider), str(db), "-p", "2",
        "-s", "shutdown_grace=600",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await until(lambda: len(list(tmp_path.glob("blocked-*"))) == 2)
        workers = workers_of(process.pid)
        others = descendants(process.pid)
        process.send_signal(signal.SIGINT)
        await until(lambda: delivered(process.pid, signal.SIGINT))
        # Not merged with the first by the kernel, and (the workers blocked for ten minutes,
        # the grace as long) it comes while the reparse waits for its workers.
        await asyncio.sleep(1.0)
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines()[-1:] == [
        "reparse interrupted: nothing was changed; run it again"
    ]
    assert b"Traceback" not in stderr
    assert not [pid for pid in workers if alive(pid)]
    assert await asyncio.to_thread(all_ended, others, 10.0)
    assert outcome(db) == outcome(catalogue)
    assert_intact(db)


async def test_workers_end_when_the_reparse_is_killed(catalogue: Path, tmp_path: Path) -> None:
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = write_spider(tmp_path, delay=0.02)
    reparses = started_reparse(spider, db, "-p", "2")
    process = await anext(reparses)
    workers = descendants(process.pid)
    assert len(workers_of(process.pid)) == 2
    process.kill()
    await process.wait()
    assert await asyncio.to_thread(all_ended, workers, 10.0)
    assert outcome(db) == outcome(catalogue)  # the transaction was never committed
    await reparses.aclose()


async def test_progress_is_plain_lines_off_a_terminal(
    catalogue: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = write_spider(tmp_path, delay=0.01)
    result = await run_cli(
        "reparse", str(spider), str(db), "-p", "2", "-s", "progress_interval=0.2"
    )
    assert result.code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("reparse: ")]
    assert lines and all(PROGRESS.fullmatch(line) for line in lines), result.stderr
    assert "\x1b[" not in result.stderr


async def test_progress_is_a_live_line_on_a_terminal(catalogue: Path, tmp_path: Path) -> None:
    db = copy_database(catalogue, tmp_path / "books.db")
    spider = write_spider(tmp_path, delay=0.01)
    controller, terminal = os.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "reparse", str(spider), str(db), "-p", "2",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=terminal,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )  # fmt: skip
    os.close(terminal)
    shown = bytearray()
    loop = asyncio.get_running_loop()
    try:
        while chunk := await loop.run_in_executor(None, _read_pty, controller):
            shown += chunk
    finally:
        os.close(controller)
    assert await process.wait() == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert PROGRESS.search(text), text
    assert "\x1b[" in text  # redrawn in place, not printed line after line


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the process closed its end
        return b""
