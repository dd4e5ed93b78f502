"""The dashboard in a real browser: headless Chromium (tests.browser) loads the page that
`crawler crawl --dashboard` serves while the crawl runs, and the page `crawler dashboard`
serves once it has finished. The numbers it shows are the database's, they grow while the
crawl runs, and a screenshot is taken of each.

Skipped, with the reason, where Chromium is not installed (`make test` installs it).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestServer

from crawler.demo import catalogue_app
from tests.browser import Browser, chromium_missing, open_browser
from tests.conftest import ROOT, rows, scalar

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))

SCREENSHOTS: Final = ROOT / "tests" / "screenshots"
"""Where the screenshots are kept after the run (ignored by git)."""

READ_PAGE: Final = """(() => {
  const value = (name) => Number(document.getElementById("total-" + name).dataset.value);
  const cells = (selector) => [...document.querySelectorAll(selector)]
    .map((tr) => [...tr.cells].map((td) => td.textContent));
  return {
    sample: Number(document.body.dataset.sample),
    status: document.body.dataset.status,
    refreshes: Number(document.body.dataset.refreshes),
    pages: value("pages"), items: value("items"), errors: value("errors"),
    failed: value("failed"), skipped: value("skipped"), bytes: value("bytes"),
    points: Number(document.getElementById("chart-pages").dataset.points),
    hosts: cells("#hosts tbody tr"),
    latest: [...document.querySelectorAll("#latest-pages td.url a")].map((a) => a.textContent),
    runs: cells("#runs tbody tr"),
  };
})()"""
SHOWN_SAMPLE: Final = "document.body.dataset.sample && document.body.dataset.refreshes >= 1"


async def start(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def printed_url(stream: asyncio.StreamReader | None, pattern: str) -> str:
    """The URL a command prints (the first line matching `pattern`)."""
    assert stream is not None
    async with asyncio.timeout(30):
        while line := (await stream.readline()).decode():
            if match := re.search(pattern, line):
                return match.group(1)
    raise AssertionError(f"no line matching {pattern!r}")


def stored_sample(db: Path, sample: int) -> dict[str, Any]:
    names = ("pages", "items", "errors", "failed", "skipped", "bytes")
    found = rows(db, f"SELECT {', '.join(names)} FROM stats_ts WHERE id = ?", (sample,))
    assert found, f"the page shows sample {sample}, which the database does not hold"
    return dict(zip(names, found[0], strict=True))


def shown_counts(page: dict[str, Any]) -> dict[str, Any]:
    return {k: page[k] for k in ("pages", "items", "errors", "failed", "skipped", "bytes")}


async def screenshot(browser: Browser, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = await browser.screenshot(SCREENSHOTS / name)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000  # a page drawn, not a blank one
    return path


async def watch_live(browser: Browser, url: str, db: Path) -> None:
    """The page of a running crawl equals the database's sample, and grows."""
    await browser.goto(url)
    await browser.wait_for(f"{SHOWN_SAMPLE} && document.body.dataset.status === 'running'")
    first = await browser.evaluate(READ_PAGE)
    assert shown_counts(first) == stored_sample(db, first["sample"])
    assert first["pages"] <= scalar(db, "SELECT count(*) FROM pages")
    await browser.wait_for(
        f"Number(document.getElementById('total-pages').dataset.value) > {first['pages']}"
    )
    later = await browser.evaluate(READ_PAGE)
    assert later["status"] == "running", "the crawl ended before the page could grow"
    assert later["sample"] > first["sample"]
    assert later["pages"] > first["pages"] and later["bytes"] > first["bytes"]
    assert shown_counts(later) == stored_sample(db, later["sample"])
    assert later["points"] >= 1
    assert later["latest"] and all(u.startswith("http://127.0.0.1:") for u in later["latest"])
    await screenshot(browser, "dashboard-live.png")


async def watch_finished(browser: Browser, url: str, db: Path) -> None:
    """The page of a finished crawl equals the tables."""
    await browser.goto(url)
    await browser.wait_for(f"{SHOWN_SAMPLE} && document.body.dataset.status === 'finished'")
    page = await browser.evaluate(READ_PAGE)
    run = scalar(db, "SELECT max(id) FROM crawls")
    with sqlite3.connect(db) as conn:
        counted = conn.execute(
            "SELECT (SELECT count(*) FROM pages WHERE crawl_id = ?), "
            "(SELECT count(*) FROM items WHERE crawl_id = ?), "
            "(SELECT count(*) FROM errors WHERE crawl_id = ?), "
            "(SELECT coalesce(sum(size_bytes), 0) FROM pages WHERE crawl_id = ?)",
            (run, run, run, run),
        ).fetchone()
        latest = [
            r[0] for r in conn.execute("SELECT url FROM pages ORDER BY id DESC LIMIT 15").fetchall()
        ]
    assert (page["pages"], page["items"], page["errors"], page["bytes"]) == counted
    assert page["pages"] > 300
    assert page["latest"] == latest
    assert page["hosts"][0][0] == "127.0.0.1"
    assert int(page["hosts"][0][5].replace(",", "")) == counted[0]  # its pages column
    assert page["runs"][0][0] == f"#{run}" and page["runs"][0][2] == "finished"
    assert page["points"] >= 2
    await screenshot(browser, "dashboard-finished.png")


@pytest.mark.timeout(240)
async def test_the_dashboard_follows_a_crawl_in_a_browser(tmp_path: Path) -> None:
    db = tmp_path / "books.db"
    async with TestServer(catalogue_app(book_count=300), host="127.0.0.1") as site:
        crawl = await start(
            "crawl",
            "books",
            "--start-url",
            str(site.make_url("/")),
            "-o",
            str(db),
            "--dashboard",
            "--dashboard-port",
            "0",
            # slow enough (about 30 pages/s) for the page to refresh during the crawl
            *("-s", "delay_per_host=0.03", "-s", "autothrottle=false"),
            *("-s", "stats_interval=0.5"),
            cwd=tmp_path,
        )
        try:
            url = await printed_url(crawl.stderr, r"dashboard: (http://\S+)")
            async with open_browser() as browser:
                await watch_live(browser, url, db)
            async with asyncio.timeout(120):
                await crawl.communicate()
        finally:
            if crawl.returncode is None:
                crawl.kill()
                await crawl.wait()
    assert crawl.returncode == 0
    served = await start("dashboard", str(db), "--port", "0", cwd=tmp_path)
    try:
        url = await printed_url(served.stdout, r" at (http://\S+) ")
        async with open_browser() as browser:
            await watch_finished(browser, url, db)
    finally:
        served.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await served.communicate()
    assert served.returncode == 0
