"""The page budgets count what the file holds, not what one process did: `max_pages` and
`max_pages_per_host` read counters that triggers keep (`frontier_counts`, `hosts`), so they
hold for every process sharing the file, and the counters always equal the counts they
stand for, whatever changed the rows (robots.txt skips after admission, reopened budget
skips on a resume)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from tests.conftest import RunCli, Target, rows, scalar
from tests.invariants import assert_all_accounted_for
from tests.sites import tree_app
from tests.spiders import FollowAllSpider

HOSTS: Final = ("127.0.0.1", "127.0.0.2")
QUIET: Final = ["-s", "autothrottle=false", "-s", "obey_robots=false"]
FAST: Final[dict[str, object]] = {
    "autothrottle": False,
    "progress_interval": 60.0,
    "write_interval": 0.02,
    "concurrency": 8,
}


@asynccontextmanager
async def two_hosts(
    pages: int, *, delay: float = 0.0, robots: str | None = None
) -> AsyncIterator[tuple[BaseTestServer, BaseTestServer]]:
    """A binary tree of `pages` pages on each of 127.0.0.1 and 127.0.0.2 (with `robots` as
    the first one's robots.txt)."""
    first = tree_app(pages, delay)
    if robots is not None:

        async def robots_txt(request: web.Request) -> web.Response:
            return web.Response(text=robots, content_type="text/plain")

        first.router.add_get("/robots.txt", robots_txt)
    async with (
        TestServer(first, host=HOSTS[0]) as one,
        TestServer(tree_app(pages, delay), host=HOSTS[1]) as two,
    ):
        yield one, two


def admitted_by_host(db: Target) -> list[tuple[str, int]]:
    return rows(
        db,
        "SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host ORDER BY host",
    )


def assert_counters_match(db: Target) -> None:
    """`frontier_counts` and `hosts` equal the counts of `requests` they stand for."""
    total = scalar(db, "SELECT count(*) FROM requests WHERE state != 'skipped'")
    assert scalar(db, "SELECT admitted FROM frontier_counts") == total
    kept = rows(db, "SELECT host, admitted FROM hosts WHERE admitted != 0 ORDER BY host")
    assert kept == admitted_by_host(db)


async def test_max_pages_per_host_holds_across_processes(tmp_path: Path, run_cli: RunCli) -> None:
    db = tmp_path / "per-host.db"
    budget = 40
    async with two_hosts(300, delay=0.05) as servers:
        starts = [arg for s in servers for arg in ("--start-url", str(s.make_url("/p/0")))]
        result = await run_cli(
            "crawl",
            "tests.spiders:FollowAllSpider",
            "-o",
            str(db),
            *starts,
            "--processes",
            "2",
            "-s",
            f"max_pages_per_host={budget}",
            "--concurrency",
            "2",
            *QUIET,
            limit=120,
        )
    assert result.code == 0, result.stderr
    # each process alone would have admitted up to `budget` per host: the file holds it once
    assert admitted_by_host(db) == [(host, budget) for host in HOSTS]
    pages = rows(
        db,
        "SELECT r.host, count(*) FROM pages p JOIN requests r ON r.id = p.request_id "
        "GROUP BY r.host ORDER BY r.host",
    )
    assert pages == [(host, budget) for host in HOSTS]
    assert scalar(db, "SELECT count(*) FROM requests WHERE reason = 'max_pages_per_host'") > 0
    # both processes did some of the work (else this would prove nothing about sharing)
    assert scalar(db, "SELECT count(DISTINCT crawl_id) FROM pages") == 2
    assert_counters_match(db)


async def test_counters_equal_the_counts_after_robots_skips_and_reopened_budget_skips(
    database: Target,
) -> None:
    # robots.txt of the first host refuses /p/3, /p/30… /p/39, /p/300…: learnt when such a
    # request is claimed, after it was admitted and counted
    async with two_hosts(200, robots="User-agent: *\nDisallow: /p/3\n") as servers:
        spider = with_start_urls(FollowAllSpider, [str(s.make_url("/p/0")) for s in servers])
        for max_pages, per_host in ((30, 20), (70, 45), (0, 0)):
            settings = {**FAST, "max_pages": max_pages, "max_pages_per_host": per_host}
            await crawl(spider, db=database, settings=settings)
            assert_all_accounted_for(database)
            assert_counters_match(database)
            assert scalar(database, "SELECT count(*) FROM requests WHERE reason = 'robots'")
            admitted = dict(admitted_by_host(database))
            if per_host:
                assert max(admitted.values()) <= per_host
                assert sum(admitted.values()) <= max_pages
                assert scalar(
                    database,
                    "SELECT count(*) FROM requests "
                    "WHERE reason IN ('max_pages', 'max_pages_per_host')",
                )
    # the last run, without budgets, reopened every budget skip and crawled both trees but
    # for what robots.txt refuses and the subtrees only reachable through it
    assert (
        scalar(
            database,
            "SELECT count(*) FROM requests WHERE reason IN ('max_pages', 'max_pages_per_host')",
        )
        == 0
    )
    refused = {n for n in range(200) if str(n).startswith("3")}
    reachable = [n for n in range(200) if not (ancestors(n) & refused)]
    assert scalar(database, "SELECT count(*) FROM pages") == 200 + len(reachable)
    assert scalar(database, "SELECT count(*) FROM requests WHERE reason = 'robots'") == len(
        [n for n in refused if not (ancestors(n) - {n}) & refused]
    )


def ancestors(n: int) -> set[int]:
    """`n` and the pages above it in `tree_app`'s binary tree."""
    found = {n}
    while n:
        n = (n - 1) // 2
        found.add(n)
    return found
