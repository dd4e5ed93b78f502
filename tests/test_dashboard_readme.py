"""The README's "Watch a crawl in the browser" runs as written: its console commands, in
order, with only the ports (free ones instead of 8000 and 8050) and the catalogue's size
(a smaller one, for a quick test) changed."""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.conftest import ROOT, scalar

SECTION = re.search(
    r"^## Watch a crawl in the browser\n(.*?)^## ", (ROOT / "README.md").read_text(), re.M | re.S
)


def commands() -> list[list[str]]:
    """The `crawler` commands of the section's console blocks, comments and `&` removed."""
    assert SECTION is not None, "the README lost its section"
    blocks = re.findall(r"```console\n(.*?)```", SECTION.group(1), re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("crawler ")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(argv: list[str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        *argv[1:],
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def first_url(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    async with asyncio.timeout(30):
        while line := (await stream.readline()).decode():
            if found := re.search(r"(http://127\.0\.0\.1:\d+/)", line):
                return found.group(1)
    raise AssertionError("no URL printed")


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        await process.communicate()


async def test_the_readme_section_runs(tmp_path: Path) -> None:
    serve, crawl, show = commands()
    assert serve[:2] == ["crawler", "serve-demo"] and crawl[:2] == ["crawler", "crawl"]
    assert "--dashboard" in crawl and show[:2] == ["crawler", "dashboard"]
    port = free_port()
    serve = [*[a.replace("2000", "150") for a in serve], "--port", str(port)]
    crawl = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in crawl]
    site = await start(serve, tmp_path)
    try:
        assert await first_url(site.stdout) == f"http://127.0.0.1:{port}/"
        crawling = await start([*crawl, "--dashboard-port", "0"], tmp_path)
        url = await first_url(crawling.stderr)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as page:
                assert page.status == 200 and "dashboard.js" in await page.text()
            async with session.get(url + "api/state") as answer:
                assert answer.status == 200
        async with asyncio.timeout(120):
            await crawling.communicate()
        assert crawling.returncode == 0
    finally:
        await stop(site)
    db = tmp_path / "watch.db"
    pages = scalar(db, "SELECT count(*) FROM pages")
    assert pages > 150
    finished = await start([*show, "--port", "0"], tmp_path)
    try:
        url = await first_url(finished.stdout)
        async with aiohttp.ClientSession() as session, session.get(url + "api/state") as got:
            state = await got.json()
        assert state["run"]["status"] == "finished" and state["totals"]["pages"] == pages
    finally:
        await stop(finished)
    assert finished.returncode == 0
