"""Every command as a real subprocess: crawl, list, query, settings, demo, bad input, Ctrl-C."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from tests.conftest import ROOT, RunCli, rows, scalar
from tests.signals import as_a_background_job
from tests.sites import follow_app, html_page


def url_of(server: BaseTestServer, path: str = "/p/0") -> str:
    return str(server.make_url(path))


async def test_crawl_command_writes_the_database_and_prints_a_summary(
    follow_site: BaseTestServer, db_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli(
        "crawl",
        "site",
        "-o",
        str(db_path),
        "--start-url",
        url_of(follow_site),
        "--max-pages",
        "30",
        "--concurrency",
        "4",
        "-s",
        "store_body=true",
    )
    assert result.code == 0, result.stderr
    assert "crawl of 'site': finished" in result.stdout
    assert "pages" in result.stdout and "30" in result.stdout
    assert scalar(db_path, "SELECT count(*) FROM pages") == 30
    settings = json.loads(scalar(db_path, "SELECT settings FROM crawls"))
    assert (settings["max_pages"], settings["concurrency"], settings["store_body"]) == (30, 4, True)
    assert scalar(db_path, "SELECT count(*) FROM pages WHERE body IS NULL") == 0
    assert "Traceback" not in result.stderr


async def test_default_output_file_is_named_after_the_spider(
    follow_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli(
        "crawl", "site", "--start-url", url_of(follow_site), "--max-pages", "3", cwd=tmp_path
    )
    assert result.code == 0, result.stderr
    assert scalar(tmp_path / "site.db", "SELECT count(*) FROM pages") == 3


async def test_list_shows_spiders_with_start_urls(run_cli: RunCli) -> None:
    result = await run_cli("list")
    assert result.code == 0
    for name, url in [
        ("books", "books.toscrape.com"),
        ("quotes", "quotes.toscrape.com"),
        ("site", "-"),
    ]:
        line = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert url in line


async def test_spider_from_a_file_path_and_module_class(
    follow_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    spider_file = tmp_path / "my_spiders.py"
    spider_file.write_text(
        "from crawler import Spider\n"
        "class Mine(Spider):\n"
        "    name = 'mine'\n"
        "    async def parse(self, response):\n"
        "        yield {'url': response.url}\n"
    )
    result = await run_cli(
        "crawl", str(spider_file), "-o", str(tmp_path / "a.db"), "--start-url", url_of(follow_site)
    )
    assert result.code == 0, result.stderr
    assert scalar(tmp_path / "a.db", "SELECT type FROM items") == "item"
    result = await run_cli(
        "crawl",
        "tests.spiders:FollowAllSpider",
        "-o",
        str(tmp_path / "b.db"),
        "--start-url",
        url_of(follow_site),
        "--max-pages",
        "5",
    )
    assert result.code == 0, result.stderr
    assert scalar(tmp_path / "b.db", "SELECT count(*) FROM items WHERE type = 'page_item'") == 5


@pytest.fixture
async def crawled(follow_site: BaseTestServer, db_path: Path, run_cli: RunCli) -> Path:
    result = await run_cli(
        "crawl", "site", "-o", str(db_path), "--start-url", url_of(follow_site), "--max-pages", "12"
    )
    assert result.code == 0, result.stderr
    return db_path


async def test_query_formats(crawled: Path, run_cli: RunCli) -> None:
    sql = "SELECT url, status FROM pages ORDER BY id LIMIT 3"
    as_json = await run_cli("query", str(crawled), sql, "--format", "json")
    assert as_json.code == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert len(records) == 3 and records[0]["status"] == 200
    as_csv = await run_cli("query", str(crawled), sql, "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["url"] for r in parsed] == [r["url"] for r in records]
    as_jsonl = await run_cli("query", str(crawled), sql, "--format", "jsonl")
    assert [json.loads(line)["url"] for line in as_jsonl.stdout.splitlines()] == [
        r["url"] for r in records
    ]
    as_table = await run_cli("query", str(crawled), sql, "--format", "table")
    assert "url" in as_table.stdout and "200" in as_table.stdout


async def test_query_binds_parameters(crawled: Path, run_cli: RunCli) -> None:
    result = await run_cli(
        "query",
        str(crawled),
        "SELECT count(*) AS n FROM pages WHERE status = :status",
        "-p",
        "status=200",
        "-f",
        "json",
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == [{"n": 12}]


async def test_settings_precedence_defaults_config_spider_cli(
    tmp_path: Path, run_cli: RunCli
) -> None:
    (tmp_path / "config.toml").write_text(
        "[crawler]\nmax_depth = 7\nmax_retries = 1\nconcurrency = 5\n"
    )
    (tmp_path / "layered.py").write_text(
        "from crawler import Spider\n"
        "class Layered(Spider):\n"
        "    name = 'layered'\n"
        "    settings = {'max_retries': 2, 'concurrency': 6}\n"
        "    async def parse(self, response):\n"
        "        yield {}\n"
    )
    result = await run_cli("settings", "layered.py", "-s", "concurrency=9", cwd=tmp_path)
    assert result.code == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "7" in lines["max_depth"] and "config.toml" in lines["max_depth"]
    assert "2" in lines["max_retries"] and "spider" in lines["max_retries"]
    assert "9" in lines["concurrency"] and "command line" in lines["concurrency"]
    assert "default" in lines["max_pages"]


async def test_demo_runs_offline_and_prints_the_example_query(
    tmp_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli("demo", "-o", str(tmp_path / "demo.db"), "--books", "60", limit=120)
    assert result.code == 0, result.stderr
    assert "crawl of 'books': finished" in result.stdout
    assert "avg_price" in result.stdout
    assert scalar(tmp_path / "demo.db", "SELECT count(*) FROM items WHERE type = 'book'") == 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["crawl", "nosuchspider"],
            "unknown spider 'nosuchspider' (known spiders: books, quotes, site",
        ),
        (
            ["crawl", "site", "--start-url", "ftp://example.com/"],
            "bad start URL 'ftp://example.com/'",
        ),
        (["crawl", "site", "--start-url", "http://[broken/"], "bad start URL"),
        (
            ["crawl", "site", "-s", "concurency=3", "--start-url", "http://127.0.0.1:9/"],
            "command line: unknown setting 'concurency' (did you mean 'concurrency'?)",
        ),
        (
            ["crawl", "site", "-s", "max_pages=lots", "--start-url", "http://127.0.0.1:9/"],
            "command line: setting 'max_pages' must be int, got 'lots'",
        ),
        (
            ["crawl", "site", "-s", "novalue", "--start-url", "http://127.0.0.1:9/"],
            "-s expects key=value",
        ),
        (["crawl", "site", "--config", "/nonexistent/config.toml"], "config file not found"),
        (["crawl", "missing_file.py"], "no such spider file: missing_file.py"),
        (["crawl", "nosuchmodule.sub:Cls"], "no module named 'nosuchmodule.sub'"),
        (
            ["query", "/nonexistent/crawl.db", "SELECT 1"],
            "no such database file: /nonexistent/crawl.db",
        ),
        (["settings", "nosuchspider"], "unknown spider 'nosuchspider'"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, run_cli: RunCli
) -> None:
    result = await run_cli(*args)
    assert result.code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_bad_sql_and_bad_files(crawled: Path, tmp_path: Path, run_cli: RunCli) -> None:
    bad_sql = await run_cli("query", str(crawled), "SELEC nonsense")
    assert bad_sql.code == 2
    assert bad_sql.stderr.startswith('error: SQL error: near "SELEC": syntax error')
    write = await run_cli("query", str(crawled), "DELETE FROM pages")
    assert write.code == 2
    assert "readonly" in write.stderr
    assert scalar(crawled, "SELECT count(*) FROM pages") == 12
    broken_config = tmp_path / "broken.toml"
    broken_config.write_text("[crawler\n")
    result = await run_cli("crawl", "site", "--config", str(broken_config))
    assert result.code == 2 and "cannot read config file" in result.stderr
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, not sqlite " * 100)
    result = await run_cli(
        "crawl", "site", "-o", str(not_a_db), "--start-url", "http://127.0.0.1:9/"
    )
    assert result.code == 2 and "not a crawl database" in result.stderr
    assert "Traceback" not in result.stderr


async def test_another_spiders_database_is_refused_without_fresh(
    crawled: Path, follow_site: BaseTestServer, run_cli: RunCli
) -> None:
    result = await run_cli(
        "crawl",
        "tests.spiders:FollowAllSpider",
        "-o",
        str(crawled),
        "--start-url",
        url_of(follow_site),
    )
    assert result.code == 2
    assert "holds a crawl of spider 'site'" in result.stderr and "--fresh" in result.stderr
    fresh = await run_cli(
        "crawl",
        "tests.spiders:FollowAllSpider",
        "-o",
        str(crawled),
        "--start-url",
        url_of(follow_site),
        "--fresh",
    )
    assert fresh.code == 0, fresh.stderr
    assert rows(crawled, "SELECT spider FROM crawls") == [("follow_all",)]


@pytest.mark.parametrize("command", ["", "crawl", "list", "query", "settings", "demo"])
async def test_help_everywhere(command: str, run_cli: RunCli) -> None:
    result = await run_cli(*([command] if command else []), "--help")
    assert result.code == 0
    assert "Usage:" in result.stdout


def slow_app(pages: int) -> web.Application:
    """Pages that take 50 ms each, so a crawl is still running when it is interrupted."""

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        await asyncio.sleep(0.05)
        links = "".join(f'<a href="/p/{m}">{m}</a>' for m in (n * 2 + 1, n * 2 + 2) if m < pages)
        return web.Response(
            text=html_page(f"<p class='n'>{n}</p>{links}"), content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    return app


async def test_ctrl_c_stops_cleanly_with_exit_130_and_resume_completes(db_path: Path) -> None:
    async with TestServer(slow_app(pages=200), host="127.0.0.1") as server:
        args = [
            "-m",
            "crawler",
            "crawl",
            "tests.spiders:FollowAllSpider",
            "-o",
            str(db_path),
            "--start-url",
            url_of(server),
            "--concurrency",
            "4",
            "-s",
            "autothrottle=false",  # the site's artificial latency would slow every host down
        ]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            while await asyncio.to_thread(_pages, db_path) < 20:  # noqa: ASYNC110 - another process's file
                await asyncio.sleep(0.1)
            process.send_signal(signal.SIGINT)
            stdout, stderr = await process.communicate()
        assert process.returncode == 130, stderr.decode()
        assert "crawl of 'follow_all': interrupted" in stdout.decode()
        assert rows(db_path, "SELECT status FROM crawls") == [("interrupted",)]
        assert scalar(db_path, "PRAGMA integrity_check") == "ok"
        assert scalar(db_path, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
        done_before = scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'done'")
        assert 20 <= done_before < 200
        resume = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            await resume.communicate()
        assert resume.returncode == 0
    assert scalar(db_path, "SELECT count(*) FROM pages") == 200
    assert scalar(db_path, "SELECT count(DISTINCT request_id) FROM pages") == 200
    assert scalar(db_path, "SELECT count(*) FROM items") == 200


def _pages(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return int(scalar(db, "SELECT count(*) FROM pages"))
    except Exception:  # the schema may not exist yet
        return 0


async def test_follow_app_is_reachable_for_cli_tests() -> None:
    async with TestServer(follow_app(pages=3), host="127.0.0.1") as server:
        assert url_of(server).startswith("http://127.0.0.1:")


STARTED_AS = pytest.mark.parametrize(
    "preexec", [None, as_a_background_job], ids=["from a terminal", "SIGINT ignored"]
)


@STARTED_AS
async def test_serve_demo_serves_until_sigterm(preexec: Callable[[], None] | None) -> None:
    """SIGTERM stops it as Ctrl-C does, also when started with SIGINT ignored (a script's
    `command &`); stopping is how it ends: exit code 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "serve-demo", "--port", "0", "--size", "20",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec,
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(30):
        assert b"serving the demo books site at" in await process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stderr.decode().endswith("stopped\n")


@STARTED_AS
async def test_bench_stopped_by_sigterm_exits_130(
    preexec: Callable[[], None] | None, tmp_path: Path
) -> None:
    """The figures so far are printed, and the exit code says they are of an interrupted run."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "bench", "--concurrency", "2",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)}, preexec_fn=preexec,
    )  # fmt: skip
    async with asyncio.timeout(60):
        while not await asyncio.to_thread(_bench_pages, tmp_path):  # noqa: ASYNC110 - another process's file
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await process.communicate()
    assert process.returncode == 130, stderr.decode()
    assert "pages/s" in stdout.decode()
    assert "bench interrupted" in stderr.decode()
    assert "Traceback" not in stderr.decode()


def _bench_pages(tmp: Path) -> int:
    """Pages in the database of the bench whose TMPDIR is `tmp`."""
    return sum(_pages(db) for db in tmp.glob("crawler-bench-*/bench.db"))
