"""robots.txt: fetched once per site, obeyed (wildcards, Allow, agent groups), stored in the
`robots` table; 404 allows everything; 5xx is retried, then defers the whole site for the
cool-down and is asked again; only a real Disallow skips a URL for good."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.fetch.robots import robots_url
from tests.conftest import rows, scalar
from tests.polite_sites import VISITS, page_site, pages_app
from tests.spiders import FollowAllSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}

ROBOTS = """\
# everyone else: keep out
User-agent: *
Disallow: /

User-agent: crawler
Disallow: /private
Allow: /private/open
Disallow: /*.pdf$
Disallow: /tmp*
Crawl-delay: 0.05
"""
PATHS = (
    "/",
    "/public",
    "/private/secret",
    "/private/open",
    "/report.pdf",
    "/report.pdf.html",
    "/tmpfile",
    "/tmp/x",
)
DISALLOWED = {"/private/secret", "/report.pdf", "/tmpfile", "/tmp/x"}


def robots_site() -> TestServer:
    links = "".join(f'<a href="{path}">{path}</a>' for path in PATHS)
    return TestServer(page_site(dict.fromkeys(PATHS, links), robots=ROBOTS), host="127.0.0.2")


def spider_for(server: BaseTestServer) -> type[FollowAllSpider]:
    return with_start_urls(FollowAllSpider, [str(server.make_url("/"))])  # type: ignore[return-value]


def counted(skips: dict[str, int]) -> dict[str, int]:
    """The skip reasons that occurred (the summary may list some with 0)."""
    return {reason: count for reason, count in skips.items() if count}


def states(db: Path) -> dict[str, tuple[object, object]]:
    found = rows(db, "SELECT url, state, reason FROM requests")
    return {
        str(url).split(":", 2)[2].split("/", 1)[1]: (state, reason) for url, state, reason in found
    }


async def test_rules_for_our_user_agent_are_obeyed(db_path: Path) -> None:
    server = robots_site()
    async with server:
        stats = await crawl(spider_for(server), db=db_path, settings=FAST)
    seen = server.app[VISITS].paths()
    assert seen.count("/robots.txt") == 1
    assert not DISALLOWED & set(seen)
    assert set(seen) == {"/robots.txt", *PATHS} - DISALLOWED
    found = states(db_path)
    for path in PATHS:
        expected = ("skipped", "robots") if path in DISALLOWED else ("done", None)
        assert found[path.lstrip("/")] == expected, path
    assert stats["skipped"]["robots"] == len(DISALLOWED)


async def test_another_user_agent_gets_the_star_group(db_path: Path) -> None:
    server = robots_site()
    async with server:
        stats = await crawl(
            spider_for(server), db=db_path, settings={**FAST, "user_agent": "otherbot/2.0"}
        )
    assert server.app[VISITS].paths() == ["/robots.txt"]
    assert rows(db_path, "SELECT state, reason FROM requests") == [("skipped", "robots")]
    assert counted(stats["skipped"]) == {"robots": 1}


async def test_robots_txt_is_stored_once_per_site(db_path: Path) -> None:
    server = robots_site()
    async with server:
        await crawl(spider_for(server), db=db_path, settings={**FAST, "concurrency": 8})
        url = str(server.make_url("/robots.txt"))
    (row,) = rows(
        db_path, "SELECT url, host, status, outcome, crawl_delay, body, error FROM robots"
    )
    assert row == (
        url,
        "127.0.0.2",
        200,
        "rules",
        0.05,
        ROBOTS,
        None,
    )


async def test_a_missing_robots_txt_allows_everything(db_path: Path) -> None:
    app = pages_app(3)
    async with TestServer(app, host="127.0.0.2") as server:
        stats = await crawl(spider_for(server), db=db_path, settings=FAST)
    assert stats["pages"] == 4
    assert counted(stats["skipped"]) == {}
    assert rows(db_path, "SELECT status, outcome FROM robots") == [(404, "allow_all")]


async def test_a_failing_robots_txt_defers_the_site_then_gives_up(db_path: Path) -> None:
    app = pages_app(3, robots="User-agent: *\nAllow: /\n", robots_status=503)
    settings = {**FAST, "max_retries": 2, "robots_error_cooldown": 0.2}
    async with TestServer(app, host="127.0.0.2") as server:
        stats = await crawl(spider_for(server), db=db_path, settings=settings)
    # three fetches (two retries) per try; the start URL waits out the cool-down twice
    assert app[VISITS].paths() == ["/robots.txt"] * 9
    assert rows(db_path, "SELECT state, reason, attempts FROM requests") == [
        ("skipped", "robots_unavailable", 2)
    ]
    assert counted(stats["skipped"]) == {"robots_unavailable": 1}
    assert stats["rescheduled"] == 2
    status, outcome, error = rows(db_path, "SELECT status, outcome, error FROM robots")[0]
    assert (status, outcome) == (503, "disallow_all")
    assert "HTTP 503 after 3 attempts" in str(error)
    assert "everything disallowed for 0.2s" in str(error)


async def test_a_robots_txt_that_fails_for_a_while_only_delays_the_site(db_path: Path) -> None:
    """The README's promise: disallowed only for `robots_error_cooldown`, then asked again."""
    answers = iter([503, 503])
    app = pages_app(3)

    async def robots(request: web.Request) -> web.Response:
        return web.Response(status=next(answers, 200), text="User-agent: *\nDisallow: /p/2\n")

    app.router.add_get("/robots.txt", robots)
    settings = {**FAST, "max_retries": 1, "robots_error_cooldown": 0.3}
    async with TestServer(app, host="127.0.0.2") as server:
        stats = await crawl(spider_for(server), db=db_path, settings=settings)
    assert stats["pages"] == 3  # /, /p/0 and /p/1; /p/2 is a real Disallow
    assert app[VISITS].paths()[:3] == ["/robots.txt"] * 3
    assert states(db_path)["p/2"] == ("skipped", "robots")
    assert rows(db_path, "SELECT status, outcome FROM robots") == [(200, "rules")]
    assert counted(stats["skipped"]) == {"robots": 1}


async def test_a_robots_txt_that_errs_or_is_unreachable(db_path: Path) -> None:
    """An error page disallows the site; no server at all lets its requests fail as such."""
    app = pages_app(3, robots="User-agent: *\nAllow: /\n", robots_status=500)
    async with TestServer(app, host="127.0.0.2") as server:
        start = str(server.make_url("/"))
        spider = with_start_urls(FollowAllSpider, [start, "http://127.0.0.1:9/"])
        stats = await crawl(spider, db=db_path, settings={**FAST, "max_retries": 0})
    found = rows(db_path, "SELECT host, outcome, error FROM robots")
    robots = {host: (outcome, str(error)) for host, outcome, error in found}
    error = "HTTP 500 after 1 attempts; everything disallowed for 600s"
    assert robots["127.0.0.2"] == ("disallow_all", error)
    assert robots["127.0.0.1"][0] == "allow_all"
    assert robots["127.0.0.1"][1].startswith("connection: ")
    outcomes = dict(rows(db_path, "SELECT url, coalesce(reason, state) FROM requests"))
    assert outcomes[start] == "robots_unavailable"  # no retries left to wait for
    assert outcomes["http://127.0.0.1:9/"].startswith("connection: ")
    assert counted(stats["skipped"]) == {"robots_unavailable": 1}


async def test_obey_robots_false_ignores_robots_txt(db_path: Path) -> None:
    app = pages_app(3, robots="User-agent: *\nDisallow: /\n")
    async with TestServer(app, host="127.0.0.2") as server:
        stats = await crawl(spider_for(server), db=db_path, settings={**FAST, "obey_robots": False})
    assert stats["pages"] == 4
    assert "/robots.txt" not in app[VISITS].paths()
    assert scalar(db_path, "SELECT count(*) FROM robots") == 0


async def test_a_resumed_crawl_uses_the_stored_robots_txt(db_path: Path) -> None:
    app = pages_app(6, robots="User-agent: *\nDisallow: /p/5\n")
    async with TestServer(app, host="127.0.0.2") as server:
        first = await crawl(spider_for(server), db=db_path, settings={**FAST, "max_pages": 3})
        second = await crawl(spider_for(server), db=db_path, settings={**FAST, "max_pages": 10})
    assert first["pages"] == 3
    assert counted(second["skipped"])["robots"] == 1
    assert app[VISITS].hits("/robots.txt") == 1
    assert scalar(db_path, "SELECT count(*) FROM pages") == 6


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/a/b?c=d", "http://example.com/robots.txt"),
        ("https://Example.com:8443/x", "https://example.com:8443/robots.txt"),
        ("http://example.com:80/", "http://example.com/robots.txt"),
    ],
)
def test_each_scheme_host_and_port_has_its_own_robots_txt(url: str, expected: str) -> None:
    assert robots_url(url) == expected
