"""`crawler dashboard` and `crawler crawl --dashboard` without a browser: the answers of
`/api/state` against the tables, the page's files, read-only serving, and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.cli.dashboard import dashboard_app
from crawler.results.watch import MAX_POINTS
from tests.conftest import ROOT, RunCli, rows, scalar
from tests.signals import as_a_background_job
from tests.sites import tree_app
from tests.spiders import RaisingSpider

Client = TestClient[web.Request, web.Application]
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


@pytest.fixture
async def crawled(tmp_path: Path) -> Path:
    """A finished crawl of two runs (the first stopped by `max_pages`), with errors."""
    db = tmp_path / "tree.db"
    async with TestServer(tree_app(60), host="127.0.0.1") as site:
        spider = with_start_urls(RaisingSpider, [str(site.make_url("/p/0"))])
        await crawl(spider, db=db, settings={**FAST, "max_pages": 20, "stats_interval": 0.01})
        await crawl(spider, db=db, settings={**FAST, "stats_interval": 0.01})
    return db


@pytest.fixture
async def client(
    crawled: Path,
) -> AsyncIterator[TestClient[aiohttp.web.Request, aiohttp.web.Application]]:
    async with TestClient(TestServer(dashboard_app(crawled), host="127.0.0.1")) as client:
        yield client


async def test_the_state_is_the_database(crawled: Path, client: Client) -> None:
    response = await client.get("/api/state")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    state = await response.json()
    assert state["run"]["id"] == 2 and state["run"]["status"] == "finished"
    counted = rows(
        crawled,
        "SELECT (SELECT count(*) FROM pages WHERE crawl_id = 2), "
        "(SELECT count(*) FROM items WHERE crawl_id = 2), "
        "(SELECT count(*) FROM errors WHERE crawl_id = 2)",
    )[0]
    totals = state["totals"]
    assert (totals["pages"], totals["items"], totals["errors"]) == counted
    assert state["errors_by_kind"] == dict(
        rows(crawled, "SELECT kind, count(*) FROM errors WHERE crawl_id = 2 GROUP BY kind")
    )
    assert [r["id"] for r in state["runs"]] == [2, 1]
    assert len(state["series"]) == scalar(
        crawled, "SELECT count(*) FROM stats_ts WHERE crawl_id = 2"
    )
    assert [p["url"] for p in state["pages"]] == [
        r[0]
        for r in rows(crawled, "SELECT url FROM pages WHERE crawl_id = 2 ORDER BY id DESC LIMIT 15")
    ]
    assert state["errors"][0]["kind"] == "spider"
    assert state["hosts"][0]["host"] == "127.0.0.1" and state["hosts"][0]["pages"] == counted[0]
    first = await (await client.get("/api/state?run=1")).json()
    assert first["run"]["id"] == 1 and first["totals"]["pages"] == 20
    none = await (await client.get("/api/state?run=99")).json()
    assert none["run"] is None and none["totals"]["pages"] == 0


@settings(max_examples=40)
@given(st.text(max_size=30))
def test_any_run_parameter_is_answered(crawled_once: Path, run: str) -> None:
    async def ask() -> int:
        async with TestClient(TestServer(dashboard_app(crawled_once), host="127.0.0.1")) as c:
            return (await c.get("/api/state", params={"run": run})).status

    status = asyncio.run(ask())
    assert status == (
        200 if run == "" or (run.isascii() and run.isdigit() and len(run) <= 18) else 400
    )


@pytest.fixture(scope="module")
def crawled_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("dash") / "tree.db"

    async def run() -> None:
        async with TestServer(tree_app(5), host="127.0.0.1") as site:
            spider = with_start_urls(RaisingSpider, [str(site.make_url("/p/0"))])
            await crawl(spider, db=db, settings=FAST)

    asyncio.run(run())
    return db


async def test_the_page_needs_nothing_from_elsewhere(client: Client) -> None:
    page = await client.get("/")
    html = await page.text()
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert '<script src="static/dashboard.js">' in html
    static = resources.files("crawler.cli") / "static"
    for name in ("dashboard.html", "dashboard.js", "dashboard.css"):
        text = (static / name).read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+", text)) - {"http://www.w3.org"}
        assert not urls, f"{name} refers to {urls}"
    for name in ("dashboard.js", "dashboard.css"):
        assert (await client.get(f"/static/{name}")).status == 200
    assert (await client.get("/static/../dashboard.py")).status == 404
    assert (await client.get("/static/dashboard.py")).status == 404
    assert (await client.post("/api/state")).status == 405


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_reading_changes_nothing(crawled: Path, client: Client) -> None:
    before = digest(crawled)
    for _ in range(3):
        assert (await client.get("/api/state")).status == 200
    assert digest(crawled) == before


async def test_a_missing_or_wrong_file(tmp_path: Path) -> None:
    missing = tmp_path / "later.db"
    async with TestClient(TestServer(dashboard_app(missing), host="127.0.0.1")) as client:
        state = await (await client.get("/api/state")).json()
        assert "does not exist yet" in state["waiting"]
        sqlite3.connect(missing).close()  # what a crawl creating the file leaves at first
        state = await (await client.get("/api/state")).json()
        assert "is being created" in state["waiting"]
        missing.write_text("not a database\n" * 100)
        response = await client.get("/api/state")
        assert response.status == 503
        assert "not a crawl database" in (await response.json())["error"]


async def test_a_file_from_before_the_time_series(crawled: Path, tmp_path: Path) -> None:
    older = tmp_path / "older.db"
    shutil.copy(crawled, older)
    with sqlite3.connect(older) as conn:
        conn.executescript("DROP TABLE stats_ts; DROP TABLE host_stats;")
    async with TestClient(TestServer(dashboard_app(older), host="127.0.0.1")) as client:
        state = await (await client.get("/api/state")).json()
    assert state["series"] == [] and state["hosts"] == []
    assert state["totals"]["pages"] == scalar(
        older, "SELECT count(*) FROM pages WHERE crawl_id = 2"
    )


async def test_a_long_series_is_thinned(crawled: Path, tmp_path: Path) -> None:
    longer = tmp_path / "long.db"
    shutil.copy(crawled, longer)
    with sqlite3.connect(longer) as conn:
        conn.execute(
            "INSERT INTO stats_ts (crawl_id, at, elapsed_s, pages, items, errors, failed, "
            "skipped, bytes, in_flight, queued, pages_per_s, items_per_s, errors_per_s, "
            "bytes_per_s, errors_by_kind, skipped_by_reason, statuses) "
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
            "SELECT 3, 'now', i, i, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, '{}', '{}', '{}' FROM n"
        )
        conn.execute(
            "INSERT INTO crawls (spider, started_at, status, settings) "
            "VALUES ('x', 'now', 'running', '{}')"
        )
    async with TestClient(TestServer(dashboard_app(longer), host="127.0.0.1")) as client:
        state = await (await client.get("/api/state")).json()
    series = state["series"]
    assert MAX_POINTS / 2 < len(series) <= MAX_POINTS
    assert series[-1]["pages"] == 5000 and state["totals"]["pages"] == 5000


@pytest.mark.parametrize(
    ("stop", "preexec"), [(signal.SIGINT, None), (signal.SIGTERM, as_a_background_job)]
)
async def test_the_command_serves_until_ctrl_c(
    crawled: Path, stop: signal.Signals, preexec: Callable[[], None] | None
) -> None:
    """Until Ctrl-C, or SIGTERM (also with SIGINT ignored, as a script's `command &`):
    stopping is how it ends, exit code 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        "dashboard",
        str(crawled),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec,
    )
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode()
    url = re.search(r" at (http://127\.0\.0\.1:\d+/) ", line)
    assert url, line
    async with aiohttp.ClientSession() as session, session.get(url.group(1) + "api/state") as got:
        assert (await got.json())["run"]["id"] == 2
    process.send_signal(stop)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    assert stderr.decode().endswith("stopped\n")


async def test_bad_input_is_one_line(run_cli: RunCli, tmp_path: Path, crawled: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for args, message in [
        (["dashboard", str(tmp_path / "missing.db")], "no such database file"),
        (["dashboard", str(text)], "not a crawl database"),
        (
            ["crawl", "books", "--processes", "2", "--dashboard"],
            "--dashboard runs with one process",
        ),
    ]:
        result = await run_cli(*args, cwd=tmp_path)
        assert result.code == 2, (args, result)
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = await run_cli("dashboard", str(crawled), "--port", port, cwd=tmp_path)
        assert result.code == 2 and "cannot listen on 127.0.0.1:" in result.stderr
        result = await run_cli(
            "crawl",
            "books",
            "--start-url",
            "http://127.0.0.1:1/",
            "-o",
            "x.db",
            "--dashboard",
            "--dashboard-port",
            port,
            cwd=tmp_path,
        )
        assert result.code == 2 and "cannot listen on 127.0.0.1:" in result.stderr
        assert not (tmp_path / "x.db").exists()


async def test_crawl_with_a_dashboard_prints_its_url(tmp_path: Path) -> None:
    db = tmp_path / "tree.db"
    async with TestServer(tree_app(100, delay=0.05), host="127.0.0.1") as site:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crawler",
            "crawl",
            "tests/spiders.py:FollowAllSpider",
            "--start-url",
            str(site.make_url("/p/0")),
            "-o",
            str(db),
            "--dashboard",
            "--dashboard-port",
            "0",
            "-s",
            "stats_interval=0.2",
            "-s",
            "concurrency=2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stderr is not None
        line = (await process.stderr.readline()).decode()
        url = re.match(r"dashboard: (http://127\.0\.0\.1:\d+/)$", line.strip())
        assert url, line
        async with aiohttp.ClientSession() as session:
            seen: list[int] = []
            while len(seen) < 2:
                async with session.get(url.group(1) + "api/state") as got:
                    state = await got.json()
                if state.get("run") and state["run"]["status"] == "running" and state["sample_id"]:
                    seen.append(state["totals"]["pages"])
                await asyncio.sleep(0.3)
        await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert scalar(db, "SELECT count(*) FROM pages") == 100
