"""End-to-end crawls of local servers: following, limits, failures, and every table's content."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.errors import SkipReason
from crawler.store.budgets import _BUDGET_SKIPPED_HOSTS, _REOPEN_BUDGET_SKIPS
from crawler.store.migrations import MIGRATIONS
from crawler.store.schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    _statements,
    open_database,
)
from tests.conftest import rows, scalar
from tests.sites import follow_app, html_page
from tests.spiders import FollowAllSpider, GarbageSpider, RaisingSpider, StoppingSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


def page_handler(text: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Return a handler that always answers with this HTML."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    return handler


def start(server: BaseTestServer, path: str = "/p/0") -> str:
    return str(server.make_url(path))


async def test_crawl_follows_every_link_once(follow_site: BaseTestServer, db_path: Path) -> None:
    spider = with_start_urls(FollowAllSpider, [start(follow_site)])
    stats = await crawl(spider, db=db_path, settings=FAST)
    assert stats["pages"] == 60
    assert scalar(db_path, "SELECT count(DISTINCT url) FROM pages") == 60
    assert scalar(db_path, "SELECT count(*) FROM items WHERE type = 'page_item'") == 60
    numbers = {json.loads(str(r[0]))["number"] for r in rows(db_path, "SELECT data FROM items")}
    assert numbers == set(range(60))
    assert stats["skipped"]["duplicate"] > 100  # every page repeats links it saw before
    # '/p/5#again' and '../p/7' are the same pages as '/p/5' and '/p/7': never fetched twice
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE url LIKE '%#%'") == 0


async def test_every_table_is_filled_consistently(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(FollowAllSpider, [start(follow_site)])
    stats = await crawl(spider, db=db_path, settings=FAST)
    crawl_row = rows(
        db_path, "SELECT spider, status, reason, finished_at, settings, stats FROM crawls"
    )
    assert len(crawl_row) == 1
    spider_name, status, reason, finished_at, settings_json, stats_json = crawl_row[0]
    assert (spider_name, status, reason) == ("follow_all", "finished", "frontier exhausted")
    assert finished_at is not None
    assert json.loads(str(settings_json))["backoff_base"] == 0.01
    assert json.loads(str(stats_json)) == stats
    states = dict(
        rows(
            db_path,
            "SELECT state || ':' || coalesce(reason, ''), count(*) FROM requests GROUP BY 1",
        )
    )
    assert states == {"done:": 60, "skipped:offsite": 1, "skipped:scheme": 1}
    page = rows(
        db_path,
        "SELECT status, content_type, encoding, size_bytes, depth, elapsed_ms, fetched_at, body "
        "FROM pages WHERE url LIKE '%/p/0'",
    )[0]
    assert page[:3] == (200, "text/html", "utf-8")
    assert int(str(page[3])) > 100
    assert page[4] == 0
    assert float(str(page[5])) >= 0
    assert str(page[6]).endswith("+00:00")
    assert page[7] is None
    assert scalar(db_path, "SELECT count(*) FROM links") == scalar(
        db_path, "SELECT count(*) FROM links JOIN pages ON pages.id = links.page_id"
    )
    assert (
        scalar(db_path, "SELECT count(*) FROM links WHERE to_url LIKE 'http://offsite.invalid/%'")
        == 60
    )
    assert scalar(db_path, "SELECT max(depth) FROM pages") == scalar(
        db_path, "SELECT max(depth) FROM requests WHERE state='done'"
    )
    assert scalar(db_path, "SELECT count(*) FROM errors") == 0
    assert stats["pages"] == scalar(db_path, "SELECT count(*) FROM pages")
    assert stats["items"] == scalar(db_path, "SELECT count(*) FROM items")
    assert (
        scalar(
            db_path, "SELECT json_extract(data, '$.number') FROM items WHERE page_url LIKE '%/p/7'"
        )
        == 7
    )
    assert scalar(db_path, "PRAGMA journal_mode") == "wal"
    assert scalar(db_path, "PRAGMA user_version") == SCHEMA_VERSION == 11


async def test_links_are_stored_in_page_order_once_each(db_path: Path) -> None:
    hrefs = ["/z", "/a", "mailto:x@y.invalid", "/caf%C3%A9?q=%E2%82%AC", "/a#again", "/m"]
    app = web.Application()
    app.router.add_get(
        "/", page_handler(html_page("".join(f'<a href="{h}">{h}</a>' for h in hrefs)))
    )
    async with TestServer(app, host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [start(server, "/")])
        await crawl(spider, db=db_path, settings={**FAST, "max_pages": 1})
        origin = str(server.make_url("/")).rstrip("/")
    stored = rows(db_path, "SELECT from_url, to_url FROM links ORDER BY rowid")
    assert stored == [
        (f"{origin}/", to)
        for to in (
            f"{origin}/z",
            f"{origin}/a",
            "mailto:x@y.invalid",
            f"{origin}/caf%C3%A9?q=%E2%82%AC",
            f"{origin}/m",
        )
    ]


async def test_allowed_domains_refuse_other_hosts(db_path: Path) -> None:
    other = web.Application()
    other.router.add_get("/", page_handler(html_page("other")))
    async with TestServer(other, host="127.0.0.3") as other_server:
        main = web.Application()
        link = str(other_server.make_url("/"))

        async def index(request: web.Request) -> web.Response:
            return web.Response(
                text=html_page(f'<a href="{link}">x</a><a href="/b">b</a>'),
                content_type="text/html",
            )

        main.router.add_get("/", index)
        main.router.add_get("/b", page_handler(html_page("b")))
        async with TestServer(main, host="127.0.0.2") as main_server:
            spider = with_start_urls(FollowAllSpider, [start(main_server, "/")])
            stats = await crawl(spider, db=db_path, settings=FAST)
    assert stats["pages"] == 2
    assert rows(db_path, "SELECT url, state, reason FROM requests WHERE host = '127.0.0.3'") == [
        (link, "skipped", "offsite")
    ]


async def test_max_depth_and_max_pages_limit_the_crawl(
    follow_site: BaseTestServer, tmp_path: Path
) -> None:
    spider = with_start_urls(FollowAllSpider, [start(follow_site)])
    stats = await crawl(spider, db=tmp_path / "depth.db", settings={**FAST, "max_depth": 1})
    assert scalar(tmp_path / "depth.db", "SELECT max(depth) FROM pages") == 1
    assert stats["skipped"]["depth"] > 0
    assert scalar(tmp_path / "depth.db", "SELECT count(*) FROM requests WHERE reason = 'depth'") > 0

    stats = await crawl(spider, db=tmp_path / "pages.db", settings={**FAST, "max_pages": 10})
    assert stats["pages"] == 10
    assert scalar(tmp_path / "pages.db", "SELECT count(*) FROM requests WHERE state = 'done'") == 10
    assert (
        scalar(tmp_path / "pages.db", "SELECT count(*) FROM requests WHERE reason = 'max_pages'")
        > 0
    )


async def test_raising_callback_is_recorded_and_the_crawl_goes_on(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(RaisingSpider, [start(follow_site)])
    stats = await crawl(spider, db=db_path, settings=FAST)
    assert stats["pages"] == 60
    assert stats["errors"] == {"spider": 12}
    errors = rows(db_path, "SELECT kind, message, callback FROM errors ORDER BY url")
    assert len(errors) == 12
    assert all(
        e[0] == "spider"
        and str(e[1]).startswith("ValueError: cannot handle page")
        and e[2] == "parse"
        for e in errors
    )
    # items yielded before the exception are kept
    assert scalar(db_path, "SELECT count(*) FROM items") == 60
    # pages whose callback raised still count as fetched
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'done'") == 60


async def test_garbage_output_is_recorded_not_fatal(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(GarbageSpider, [start(follow_site)])
    stats = await crawl(spider, db=db_path, settings=FAST)
    assert stats["pages"] == 1
    assert stats["items"] == 1
    messages = [
        str(r[0]) for r in rows(db_path, "SELECT kind || ': ' || message FROM errors ORDER BY id")
    ]
    assert any(m.startswith("spider: callback yielded int") for m in messages)
    assert any(m.startswith("item: item dict cannot be stored as JSON") for m in messages)
    assert any("no callback named 'no_such_method'" in m for m in messages)
    assert any("meta is not JSON-serialisable" in m for m in messages)
    assert stats["errors"] == {"item": 1, "spider": 3}


async def test_stop_crawl_from_a_callback_ends_cleanly(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(StoppingSpider, [start(follow_site)])
    stats = await crawl(spider, db=db_path, settings={**FAST, "concurrency": 1})
    assert 5 <= stats["pages"] < 60
    assert rows(db_path, "SELECT status, reason FROM crawls") == [("stopped", "enough pages")]
    # nothing is left claimed: the rest waits as pending for a resume
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'pending'") > 0


async def test_crawl_runs_twice_in_one_loop_concurrently(tmp_path: Path) -> None:
    async with TestServer(follow_app(pages=20), host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [start(server)])
        first, second = await asyncio.gather(
            crawl(spider, db=tmp_path / "a.db", settings=FAST),
            crawl(spider, db=tmp_path / "b.db", settings=FAST),
        )
    assert first["pages"] == second["pages"] == 20


async def test_resume_after_finish_fetches_nothing_again(
    follow_site: BaseTestServer, db_path: Path
) -> None:
    spider = with_start_urls(FollowAllSpider, [start(follow_site)])
    await crawl(spider, db=db_path, settings={**FAST, "max_pages": 25})
    again = await crawl(spider, db=db_path, settings=FAST)
    assert again["pages"] == 60 - 25
    assert scalar(db_path, "SELECT count(*) FROM pages") == 60
    assert (
        scalar(
            db_path,
            "SELECT count(*) FROM (SELECT request_id FROM pages GROUP BY 1 HAVING count(*) > 1)",
        )
        == 0
    )
    assert scalar(db_path, "SELECT count(*) FROM crawls") == 2


async def test_a_version_1_file_is_migrated_and_budget_skips_are_found_by_index(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as old:
        for statement in _statements(MIGRATIONS[0]):
            old.execute(statement)
        old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        old.execute("PRAGMA user_version = 1")
        old.execute(
            "INSERT INTO requests (url, fingerprint, host, depth, state, reason, crawl_id, "
            "discovered_at) "
            "VALUES ('http://a.test/1', 1, 'a.test', 1, 'skipped', 'max_pages', 1, 'now')"
        )
    await (await open_database(db)).close()
    assert scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
    for sql, params in ((_BUDGET_SKIPPED_HOSTS, ()), (_REOPEN_BUDGET_SKIPS, (None, -1))):
        plan = " ".join(str(row[3]) for row in rows(db, f"EXPLAIN QUERY PLAN {sql}", params))
        assert "requests_budget_skips" in plan, plan
    assert rows(db, _BUDGET_SKIPPED_HOSTS) == [("a.test",)]
    # the SQL spells out the reasons (so that the partial index applies): they must match
    assert (SkipReason.MAX_PAGES.value, SkipReason.MAX_PAGES_PER_HOST.value) == (
        "max_pages",
        "max_pages_per_host",
    )
