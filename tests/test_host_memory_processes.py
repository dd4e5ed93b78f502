"""Per-host state bounded in memory with `crawl --processes 2`, on SQLite and PostgreSQL: each
process keeps a few hosts in memory, and a host one process forgets or never saw comes back
from the `hosts` table with its back-off, robots.txt answers and cookies, whichever process
fetches it next. (The in-memory bounds themselves are counted in tests/test_host_memory.py,
in one process: each process of `--processes` is that same crawl.)
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp.test_utils import TestServer

from tests.conftest import ROOT, Target, scalar
from tests.polite_sites import VISITS
from tests.test_host_memory import WITHOUT_COOKIE, back_off_app, broad_app

SETTINGS = ("backoff_base=0.01", "backoff_max=0.05", "progress_interval=60")


async def crawl_in_processes(
    database: Target,
    start_urls: list[str],
    recent: int,
    *settings: str,
    options: tuple[str, ...] = (),
) -> str:
    """`crawl --processes 2` of `tests.broad_crawl` (every name on 127.0.0.1), with more
    command-line `options`; its stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tests.broad_crawl", "-o", str(database), "--processes", "2", *options),
        *(arg for setting in (*SETTINGS, *settings) for arg in ("-s", setting)),
        cwd=ROOT,
        env={
            **os.environ,
            "BROAD_START_URLS": ",".join(start_urls),
            "BROAD_RECENT_HOSTS": str(recent),
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120):
            _, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_hosts_come_back_with_robots_txt_and_cookies_in_either_process(
    database: Target,
) -> None:
    hosts = 300
    app = broad_app(hosts)
    async with TestServer(app, host="127.0.0.1") as server:
        start = [f"http://h0.test:{server.port}/"]
        settings = ("concurrency=8", "concurrency_per_host=2", "queue_window=40")
        await crawl_in_processes(database, start, 8, *settings)
    arrivals = [path for _, path in app[VISITS].arrivals]
    assert scalar(database, "SELECT count(*) FROM pages") == 2 * hosts  # home and leaf
    assert len(arrivals) == len(set(arrivals)) == 3 * hosts  # and robots.txt, each once
    assert scalar(database, "SELECT count(*) FROM hosts WHERE fetched = 2") == hosts
    assert scalar(database, "SELECT count(*) FROM requests WHERE reason = 'robots'") == hosts
    assert app[WITHOUT_COOKIE] == []  # every leaf sent its host's cookie
    both = "SELECT count(DISTINCT crawl_id) FROM pages"
    assert scalar(database, both) == 2  # the two processes shared the hosts' pages


async def test_a_host_in_back_off_is_not_fetched_early_by_either_process(
    database: Target,
) -> None:
    app = back_off_app(retry_after=2.0)
    async with TestServer(app, host="127.0.0.1") as server:
        start = [f"http://a.test:{server.port}/", f"http://b.test:{server.port}/"]
        await crawl_in_processes(database, start, 0, "retry_after_inline=0.5")
    visits = app[VISITS]
    assert scalar(database, "SELECT count(*) FROM pages") == 5
    backed_off_at = next(at for at, _, status in visits.answers if status == 429)
    for path in ("a.test/y", "a.test/x"):
        started = next(at for at, seen in visits.arrivals[::-1] if seen == path)
        assert started >= backed_off_at + 2.0 - 0.05, path
    assert sum(1 for _, path in visits.arrivals if path.endswith("/robots.txt")) == 2
