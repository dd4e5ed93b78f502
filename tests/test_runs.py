"""Running crawls: status while running, several processes on one file, DFS order, a second
Ctrl-C, progress lines, and --help on every command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.cli.main import cli
from crawler.engine.crawl import run_to_the_end
from crawler.records import utc_now
from crawler.store.schema import SCHEMA_VERSION
from tests.conftest import ROOT, RunCli, rows, scalar
from tests.databases import assert_intact
from tests.invariants import assert_all_accounted_for
from tests.polite_sites import Handler
from tests.signals import as_a_background_job, ignored
from tests.sites import html_page, tree_app
from tests.spiders import FollowAllSpider

QUIET = ["-s", "autothrottle=false", "-s", "obey_robots=false"]
FAST_QUIET = {"autothrottle": False, "obey_robots": False, "progress_interval": 60.0}


@pytest.fixture
async def slow_tree() -> AsyncIterator[BaseTestServer]:
    async with TestServer(tree_app(pages=150, delay=0.03), host="127.0.0.1") as server:
        yield server


async def start(
    server: BaseTestServer,
    db: Path,
    *extra: str,
    new_session: bool = False,
    preexec: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """Start `crawler crawl` (FollowAllSpider, concurrency 2 unless `extra` says otherwise);
    with `new_session`, in a process group of its own, as a shell starts a command; `preexec`
    runs in the child before exec."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        "crawl",
        "tests.spiders:FollowAllSpider",
        "-o",
        str(db),
        "--start-url",
        str(server.make_url("/p/0")),
        "--concurrency",
        "2",
        *QUIET,
        *extra,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=new_session,
        preexec_fn=preexec,
    )


def pages_in(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return int(scalar(db, "SELECT count(*) FROM pages"))
    except Exception:  # the schema may not exist yet
        return 0


async def wait_for_pages(db: Path, count: int) -> None:
    async with asyncio.timeout(30):
        while await asyncio.to_thread(pages_in, db) < count:  # noqa: ASYNC110 - another process's file
            await asyncio.sleep(0.05)


def held_after(answered: int, release: asyncio.Event) -> web.Application:
    """`tree_app(pages=150)` answering `answered` requests, then holding each further one
    until `release` is set: a crawl of it is running until then, however slow the machine."""
    app = tree_app(pages=150)
    count = 0

    @web.middleware
    async def hold(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count > answered:
            await release.wait()
        return await handler(request)

    app.middlewares.append(hold)
    return app


async def test_status_while_running_and_after(db_path: Path, run_cli: RunCli) -> None:
    release = asyncio.Event()
    async with TestServer(held_after(20, release), host="127.0.0.1") as server:
        process = await start(server, db_path)
        try:
            await wait_for_pages(db_path, 10)
            running = await run_cli("status", str(db_path), "-f", "json")
        finally:
            release.set()
        async with asyncio.timeout(60):
            await process.communicate()
    assert running.code == 0, running.stderr
    state = json.loads(running.stdout)
    assert state["spider"] == "follow_all"
    assert state["latest_run"]["status"] == "running"
    assert state["requests"]["done"] >= 10
    assert state["requests"]["pending"] + state["in_flight"] >= 1
    assert process.returncode == 0
    finished = json.loads((await run_cli("status", str(db_path), "-f", "json")).stdout)
    assert finished["latest_run"]["status"] == "finished"
    assert finished["requests"] == {"pending": 0, "done": 150, "failed": 0, "skipped": 0}
    table = await run_cli("status", str(db_path))
    assert "done" in table.stdout and "150" in table.stdout


async def test_two_processes_share_one_frontier(tmp_path: Path, run_cli: RunCli) -> None:
    db = tmp_path / "shared.db"
    async with TestServer(tree_app(pages=300, delay=0.05), host="127.0.0.1") as server:
        result = await run_cli(
            "crawl",
            "tests.spiders:FollowAllSpider",
            "-o",
            str(db),
            "--start-url",
            str(server.make_url("/p/0")),
            "--processes",
            "2",
            "--concurrency",
            "4",
            *QUIET,
            limit=120,
        )
    assert result.code == 0, result.stderr
    assert "crawl of '2 processes': finished" in result.stdout
    assert scalar(db, "SELECT count(*) FROM pages") == 300
    assert scalar(db, "SELECT count(DISTINCT url) FROM pages") == 300
    assert scalar(db, "SELECT count(*) FROM items") == 300
    runs = rows(db, "SELECT status, json_extract(stats, '$.pages') FROM crawls ORDER BY id")
    assert [status for status, _ in runs] == ["finished", "finished"]
    assert sum(int(pages) for _, pages in runs) == 300
    assert all(int(pages) > 0 for _, pages in runs)  # both processes did work
    assert scalar(db, "PRAGMA integrity_check") == "ok"


async def test_dfs_order_goes_deep_first(db_path: Path) -> None:
    async with TestServer(tree_app(pages=31, delay=0), host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/p/0"))])
        settings = {"order": "dfs", "concurrency": 1, "autothrottle": False, "obey_robots": False}
        await crawl(spider, db=db_path, settings=settings)
    depths = [int(d) for (d,) in rows(db_path, "SELECT depth FROM pages ORDER BY id")]
    assert depths[:5] == [0, 1, 2, 3, 4]  # breadth-first would be 0, 1, 1, 2, 2


def hanging_app(fast_pages: int) -> web.Application:
    """Pages /p/0 … answer at once and link on; pages past `fast_pages` take 20 seconds."""

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n >= fast_pages:
            await asyncio.sleep(20)
        links = "".join(f'<a href="/p/{m}">{m}</a>' for m in (2 * n + 1, 2 * n + 2))
        return web.Response(
            text=html_page(f"<p class='n'>{n}</p>{links}"), content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    return app


async def test_second_ctrl_c_exits_at_once_and_the_database_survives(db_path: Path) -> None:
    async with TestServer(hanging_app(fast_pages=15), host="127.0.0.1") as server:
        process = await start(server, db_path, "-s", "shutdown_grace=30")
        await wait_for_pages(db_path, 15)
        await asyncio.sleep(0.3)  # the workers are now waiting on 20-second pages
        process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)
        first_ctrl_c_done = process.returncode is not None
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):  # far below the 20 s pages and the 30 s grace
            await process.communicate()
    assert not first_ctrl_c_done  # the first Ctrl-C waits for the in-flight requests
    assert process.returncode in (130, -signal.SIGINT)
    assert scalar(db_path, "PRAGMA integrity_check") == "ok"
    assert scalar(db_path, "SELECT count(*) FROM pages") == 15
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'pending'") > 0


@pytest.mark.parametrize("pages_first", [150, 300, 450])
async def test_two_ctrl_c_at_once_in_a_busy_crawl_record_the_run_as_interrupted(
    pages_first: int, db_path: Path
) -> None:
    # The second Ctrl-C cancels the writer, often while its batch runs in SQLite's thread
    # (which then commits it): neither the writer's nor the run's rollback may fail on that.
    async with TestServer(tree_app(pages=3000), host="127.0.0.1") as server:
        process = await start(server, db_path, "--concurrency", "32")
        await wait_for_pages(db_path, pages_first)  # the writer is busy committing
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)  # the second one cancels, whatever is running
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 130, stderr.decode()
        assert scalar(db_path, "PRAGMA integrity_check") == "ok"
        assert rows(db_path, "SELECT status FROM crawls") == [("interrupted",)]
        assert scalar(db_path, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/p/0"))])
        await crawl(spider, db=db_path, settings={**FAST_QUIET, "concurrency": 32})
    assert_all_accounted_for(db_path)
    assert scalar(db_path, "SELECT count(*) FROM pages") == 3000


async def test_progress_lines_when_not_on_a_terminal(
    slow_tree: BaseTestServer, db_path: Path
) -> None:
    process = await start(slow_tree, db_path, "-s", "progress_interval=0.3")
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    lines = [
        line for line in stderr.decode().splitlines() if "pages/s" not in line and "queued" in line
    ]
    assert len(lines) >= 2
    assert "in flight" in lines[0] and "errors" in lines[0]


@pytest.mark.parametrize("command", sorted(cli.commands))
async def test_every_command_has_help(command: str, run_cli: RunCli) -> None:
    result = await run_cli(command, "--help")
    assert result.code == 0, result.stderr
    assert f"Usage: crawler {command}" in result.stdout


async def test_max_pages_holds_across_processes(tmp_path: Path, run_cli: RunCli) -> None:
    db = tmp_path / "budget.db"
    async with TestServer(tree_app(pages=300, delay=0.05), host="127.0.0.1") as server:
        result = await run_cli(
            "crawl",
            "tests.spiders:FollowAllSpider",
            "-o",
            str(db),
            "--start-url",
            str(server.make_url("/p/0")),
            "--processes",
            "2",
            "--max-pages",
            "60",
            *QUIET,
            limit=120,
        )
    assert result.code == 0, result.stderr
    assert scalar(db, "SELECT count(*) FROM pages") == 60
    assert scalar(db, "SELECT count(*) FROM requests WHERE state != 'skipped'") == 60


async def test_processes_creating_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from crawler.store.schema import open_database\n"
        "async def main():\n"
        "    await (await open_database(Path(sys.argv[1]))).close()\n"
        "asyncio.run(main())\n"
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(db), cwd=ROOT, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    async with asyncio.timeout(30):
        results = [await p.communicate() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [e.decode() for _, e in results]
    assert scalar(db, "PRAGMA user_version") == SCHEMA_VERSION


def test_utc_now_is_iso_8601_utc_with_milliseconds() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    stamps = [utc_now() for _ in range(2000)]
    after = datetime.now(UTC)
    for stamp in stamps:
        assert len(stamp) == len("2026-12-05T06:55:51.397+00:00")
        assert before <= datetime.fromisoformat(stamp) <= after
    assert stamps == sorted(stamps)


RECEIVED = web.AppKey("received", list[str])


def counting_tree_app(pages: int, delay: float) -> web.Application:
    """tree_app's pages, recording the path of every request that reached the server in
    app[RECEIVED]."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        request.app[RECEIVED].append(request.path)
        return await handler(request)

    app = tree_app(pages, delay)
    app.middlewares.append(count)
    app[RECEIVED] = []
    return app


@pytest.mark.parametrize("target", ["parent", "process group"])
async def test_ctrl_c_stops_all_processes_gracefully_and_a_resume_finishes(
    target: str, db_path: Path
) -> None:
    app = counting_tree_app(pages=150, delay=0.1)
    async with TestServer(app, host="127.0.0.1") as server:
        process = await start(
            server,
            db_path,
            *("--processes", "2", "--concurrency", "4", "-s", "shutdown_grace=30"),
            new_session=True,
        )
        await wait_for_pages(db_path, 20)
        if target == "parent":
            process.send_signal(signal.SIGINT)
        else:  # what Ctrl-C at a terminal does: every process of the group gets SIGINT
            os.killpg(process.pid, signal.SIGINT)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
        received = len(app[RECEIVED])
        assert process.returncode == 130, stderr.decode()
        assert "2 processes" in stdout.decode()
        runs = rows(db_path, "SELECT status FROM crawls ORDER BY id")
        assert runs == [("interrupted",), ("interrupted",)]
        # A graceful stop: every request that reached the server was finished and stored
        # (a second signal would have cancelled those in flight).
        assert scalar(db_path, "SELECT count(*) FROM pages") == received < 150
        assert scalar(db_path, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/p/0"))])
        await crawl(spider, db=db_path, settings={**FAST_QUIET, "concurrency": 32})
    assert_all_accounted_for(db_path)
    assert scalar(db_path, "SELECT count(*) FROM pages") == 150


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigterm_stops_a_crawl_started_with_sigint_ignored(
    processes: int, db_path: Path
) -> None:
    """A script's background job (`crawler crawl ... &`) ignores SIGINT: SIGTERM stops it as
    Ctrl-C does (with --processes, the command passes it on to its workers), and it resumes."""
    app = counting_tree_app(pages=150, delay=0.1)
    async with TestServer(app, host="127.0.0.1") as server:
        process = await start(
            server,
            db_path,
            *("--processes", str(processes), "--concurrency", "4", "-s", "shutdown_grace=30"),
            preexec=as_a_background_job,
        )
        await wait_for_pages(db_path, 20)
        assert signal.SIGINT in ignored(process.pid)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        received = len(app[RECEIVED])
        assert process.returncode == 130, stderr.decode()
        assert rows(db_path, "SELECT status FROM crawls") == [("interrupted",)] * processes
        assert_intact(db_path)
        assert scalar(db_path, "SELECT count(*) FROM pages") == received < 150
        assert scalar(db_path, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/p/0"))])
        await crawl(spider, db=db_path, settings={**FAST_QUIET, "concurrency": 32})
    assert_all_accounted_for(db_path)
    assert scalar(db_path, "SELECT count(*) FROM pages") == 150


async def test_the_end_of_a_run_is_recorded_even_when_cancelled_meanwhile() -> None:
    steps: list[str] = []

    async def cleanup() -> None:
        steps.append("started")
        await asyncio.sleep(0.2)
        steps.append("finished")

    async def run() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await run_to_the_end(cleanup())

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    task.cancel()  # the first Ctrl-C's cancellation
    await asyncio.sleep(0.05)
    task.cancel()  # another one, while the cleanup runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["started", "finished"]
