"""`crawl --processes N` killed at random moments: the file stays intact and the crawl resumes.

Each test runs the real command line in a session of its own, as a shell would, against a site
on 127.0.0.1 whose pages answer after a short delay, so that kills land mid-crawl: while the
parent loads, forks, or waits, and while the workers claim, fetch and commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler.engine.processes import run_processes
from tests.conftest import ROOT, Target
from tests.databases import assert_intact, is_postgres, rows
from tests.sites import html_page

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find the workers"
)

DELAY = web.AppKey("delay", list[float])
KILLS: Final = 20
T = TypeVar("T")
SITE_PAGES: Final = 800
WORKER_KILLED: Final = re.compile(r"^worker \d of \d \(pid (\d+)\) was killed by SIGKILL\b", re.M)


def tree_site(pages: int, delay: float) -> web.Application:
    """A binary tree of pages (/p/n links to /p/2n+1 and /p/2n+2) answering after
    app[DELAY][0] seconds, which a test may change while the site is served."""

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        await asyncio.sleep(request.app[DELAY][0])
        links = "".join(f'<a href="/p/{m}">{m}</a>' for m in (2 * n + 1, 2 * n + 2) if m < pages)
        return web.Response(
            text=html_page(f"<p class='n'>{n}</p>{links}"), content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    app[DELAY] = [delay]
    return app


class Command:
    """One `crawler crawl --processes N` in a session of its own, its stderr collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr = ""
        self._reader = asyncio.create_task(self._read(process))

    @classmethod
    async def start(cls, url: str, db: Target, processes: int, *extra: str) -> Command:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "crawler", "crawl", "tests.spiders:FollowAllSpider", "-o", str(db)),
            *("--start-url", url, "--processes", str(processes), "--concurrency", "2"),
            *("-s", "autothrottle=false", "-s", "obey_robots=false"),
            *("-s", "progress_interval=60"),
            *extra,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(process)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():  # EOF once every worker is gone too
            self.stderr += line.decode()

    @property
    def pid(self) -> int:
        return self.process.pid

    def workers(self) -> list[int]:
        """The live workers: children of the parent, still in its session."""
        return [pid for pid, ppid in _session(self.pid).items() if ppid == self.pid]

    async def wait_for_line(self, pattern: re.Pattern[str]) -> str:
        found = await _until(lambda: pattern.search(self.stderr), limit=15.0)
        assert found, self.stderr
        return found.group(0)

    async def wait_ended(self, limit: float = 15.0) -> int:
        """Wait until the parent has ended; return its exit code."""
        # (not process.wait(): it also waits for the end of stderr, which workers hold too)
        ended = await _until(lambda: self.process.returncode is not None, limit)
        assert ended, f"the command did not end within {limit} s: {self.stderr}"
        assert self.process.returncode is not None
        return self.process.returncode

    async def check_all_gone(self) -> None:
        """Check that every process of the command's session ends soon after its parent."""
        gone = await _until(lambda: not _session(self.pid), limit=10.0)
        assert gone, f"workers outlived their parent: {_session(self.pid)}"
        async with asyncio.timeout(5):
            await self._reader

    async def wait_all_gone(self, limit: float = 15.0) -> int:
        code = await self.wait_ended(limit)
        await self.check_all_gone()
        return code


async def _until(check: Callable[[], T], limit: float) -> T:
    """Poll `check` until it returns a true value or `limit` seconds have passed; return
    its last value."""
    deadline = time.monotonic() + limit
    # Other processes' state: there is no event to await.
    while not (value := check()) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return value


def _session(sid: int) -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process of session `sid`."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        state, ppid, _, session = stat.rpartition(")")[2].split()[:4]
        if int(session) == sid and state != "Z":
            found[int(entry)] = int(ppid)
    return found


def _query(db: Target, sql: str) -> list[tuple[Any, ...]]:
    if is_postgres(db):
        return rows(db, sql)
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _check_file(db: Target, urls: set[str]) -> None:
    """The database is intact, every page is stored once, every request once and finished."""
    assert_intact(db)
    stored = _query(db, "SELECT url, count(*) FROM pages GROUP BY url")
    assert {url for url, _ in stored} == urls
    assert [url for url, count in stored if count > 1] == []
    assert _query(db, "SELECT url FROM requests GROUP BY url HAVING count(*) > 1") == []
    assert _query(db, "SELECT state, count(*) FROM requests GROUP BY state") == [
        ("done", len(urls))
    ]
    assert _query(db, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == [(0,)]


async def _kill_one_worker(command: Command, rng: random.Random) -> bool:
    """SIGKILL one live worker and check that the parent says so; return whether the
    parent is still running."""
    workers = await _until(command.workers, limit=15.0)  # forked by then
    assert workers, f"no worker (exit code {command.process.returncode}): {command.stderr}"
    victim = rng.choice(sorted(workers))
    os.kill(victim, signal.SIGKILL)
    said = re.compile(rf"^worker \d of \d \(pid {victim}\) was killed by SIGKILL\b.*$", re.M)
    line = await command.wait_for_line(said)
    return "no worker is left" not in line


@pytest.mark.parametrize(
    ("processes", "backend"), [(2, "sqlite"), (3, "sqlite"), (3, "postgresql")]
)
async def test_random_kills_leave_an_intact_file_that_resumes_to_the_end(
    processes: int, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db: Target = tmp_path / "kills.db"
    if backend == "postgresql":  # the same kills, the workers sharing a PostgreSQL database
        db = request.getfixturevalue("postgres_server").create_database()
    rng = random.Random(1540 + processes)  # issue 15, point 4: the same kills on every run
    site = tree_site(SITE_PAGES, delay=0.1)
    async with TestServer(site, host="127.0.0.1") as server:
        url = str(server.make_url("/p/0"))
        command: Command | None = None
        dying: Command | None = None
        killed_workers = 0
        for _ in range(KILLS):
            if command is None:
                command = await Command.start(url, db, processes)
            if dying is not None:  # checked while the next one starts, as after a restart
                await dying.check_all_gone()
                dying = None
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            target = rng.choice(["process group", "parent", "worker"])
            if target == "worker":
                if await _kill_one_worker(command, rng):
                    killed_workers += 1
                    continue  # the others carry on; the next kill lands on them
                # That was the last worker: the parent ends, and says that one was killed.
                assert await command.wait_ended() == 128 + signal.SIGKILL, command.stderr
            else:
                with contextlib.suppress(ProcessLookupError):  # ended before, for some reason
                    if target == "parent":
                        os.kill(command.pid, signal.SIGKILL)
                    else:
                        os.killpg(command.pid, signal.SIGKILL)
                await command.wait_ended()
            dying, command = command, None
        for last in (dying, command):
            if last is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(last.pid, signal.SIGKILL)
                await last.wait_all_gone()
        assert killed_workers > 0
        done = _query(db, "SELECT count(*) FROM pages")[0][0]
        assert 0 < done < SITE_PAGES  # the kills landed mid-crawl
        site[DELAY][0] = 0.0
        final = await Command.start(url, db, processes, "--concurrency", "16")
        code = await final.wait_all_gone(limit=60)
        assert code == 0, final.stderr
        urls = {str(server.make_url(f"/p/{n}")) for n in range(SITE_PAGES)}
    _check_file(db, urls)
    assert _query(db, "SELECT status FROM crawls ORDER BY id DESC LIMIT 1") == [("finished",)]


async def test_a_killed_worker_is_reported_and_the_others_finish_the_crawl(
    tmp_path: Path,
) -> None:
    db = tmp_path / "one.db"
    async with TestServer(tree_site(200, delay=0.05), host="127.0.0.1") as server:
        url = str(server.make_url("/p/0"))
        command = await Command.start(url, db, 2, "--concurrency", "4")
        assert await _until(lambda: len(command.workers()) == 2 and _pages(db) >= 20, 30.0)
        victim = command.workers()[0]
        os.kill(victim, signal.SIGKILL)
        # Without the parent freeing the dead worker's claims, the other one would wait for
        # their leases to run out (claims.LEASE_SECONDS, two minutes).
        code = await command.wait_all_gone(limit=45)
        urls = {str(server.make_url(f"/p/{n}")) for n in range(200)}
    assert code == 128 + signal.SIGKILL, command.stderr
    lines = WORKER_KILLED.findall(command.stderr)
    assert lines == [str(victim)], command.stderr
    assert "the other one carries on" in command.stderr
    _check_file(db, urls)
    runs = _query(db, "SELECT pid, status FROM crawls ORDER BY id")
    assert sorted(status for _, status in runs) == ["crashed", "finished"]
    assert dict(runs)[victim] == "crashed"


def _pages(db: Path) -> int:
    try:
        return int(_query(db, "SELECT count(*) FROM pages")[0][0])
    except sqlite3.Error:  # not created yet
        return 0


def test_workers_are_not_forked_while_the_database_is_open(tmp_path: Path) -> None:
    db = tmp_path / "open.db"
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        with pytest.raises(RuntimeError, match="open in the parent"):
            run_processes(2, lambda: 0, db=db, shutdown_grace=1.0)
    finally:
        conn.close()


async def test_the_summary_counts_what_a_killed_worker_stored(
    follow_site: TestServer, tmp_path: Path
) -> None:
    from crawler import crawl
    from crawler.cli.common import with_start_urls
    from crawler.engine.summary import combined_summary
    from tests.spiders import FollowAllSpider

    db = tmp_path / "crawl.db"
    spider = with_start_urls(FollowAllSpider, [str(follow_site.make_url("/p/0"))])
    await crawl(spider, db=db, settings={"progress_interval": 60.0})
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        # as a worker killed mid-crawl leaves its run: no stats recorded
        conn.execute("UPDATE crawls SET status = 'crashed', stats = NULL")
    status, summary = combined_summary(db, 0)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pages, received = conn.execute("SELECT count(*), sum(size_bytes) FROM pages").fetchone()
        items = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    assert status == "crashed"
    assert (summary["processes"], summary["pages"], summary["items"]) == (1, pages, items)
    assert summary["bytes_received"] == received and pages > 0
