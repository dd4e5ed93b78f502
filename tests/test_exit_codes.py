"""`crawler crawl` exit codes a script can trust: 0 when the crawl did its work (or had none
to do), 1 when every start request failed, 2 for a usage error before any file exists."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from crawler.demo import catalogue_app
from tests.conftest import RunCli, scalar

QUICK = ("-s", "max_retries=0", "-s", "autothrottle=false", "-s", "progress_interval=60")


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening on it (for now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_a_refused_start_url_exits_1_and_the_next_run_completes_it(
    tmp_path: Path, run_cli: RunCli, processes: str
) -> None:
    port = free_port()
    db = tmp_path / "site.db"
    command = (
        *("crawl", "site", "-o", str(db), "--start-url", f"http://127.0.0.1:{port}/"),
        *("--processes", processes, *QUICK),
    )
    refused = await run_cli(*command)
    assert refused.code == 1, refused.stderr
    [line] = error_lines(refused.stderr)
    assert line.startswith("error: every start request failed (connection: "), line
    assert scalar(db, "SELECT count(*) FROM pages") == 0
    assert scalar(db, "SELECT status FROM crawls ORDER BY id DESC LIMIT 1") == "failed"

    async with TestServer(catalogue_app(book_count=20), host="127.0.0.1", port=port):
        resumed = await run_cli(*command)
    assert resumed.code == 0, resumed.stderr
    assert error_lines(resumed.stderr) == []
    assert scalar(db, "SELECT count(*) FROM pages") > 10
    assert scalar(db, "SELECT count(*) FROM requests WHERE state = 'failed'") == 0


@pytest.mark.parametrize("extra", [(), ("-o", "out.db"), ("--processes", "2")])
async def test_a_spider_without_start_urls_is_a_usage_error_and_creates_nothing(
    tmp_path: Path, run_cli: RunCli, extra: tuple[str, ...]
) -> None:
    result = await run_cli("crawl", "site", *extra, cwd=tmp_path)
    assert result.code == 2
    assert result.stderr == (
        "error: spider 'site' has no start URLs: give one with --start-url URL\n"
    )
    assert files_in(tmp_path) == []


async def test_a_crawl_exits_0_and_so_does_resuming_it_once_finished(
    tmp_path: Path, run_cli: RunCli
) -> None:
    db = tmp_path / "books.db"
    async with TestServer(catalogue_app(book_count=20), host="127.0.0.1") as server:
        url = str(server.make_url("/"))
        command = ("crawl", "books", "-o", str(db), "--start-url", url, *QUICK)
        first = await run_cli(*command)
        assert first.code == 0, first.stderr
        pages = scalar(db, "SELECT count(*) FROM pages")
        assert pages > 10
        again = await run_cli(*command)  # nothing left to do, by design
    assert again.code == 0, again.stderr
    assert error_lines(again.stderr) == []
    assert scalar(db, "SELECT count(*) FROM pages") == pages
    assert scalar(db, "SELECT group_concat(status) FROM crawls") == "finished,finished"
