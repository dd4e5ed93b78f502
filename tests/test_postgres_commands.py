"""Every command on a PostgreSQL URL (issue 18, points 1, 2 and 4): crawl -o URL and the
`database` setting, query in a read-only transaction, stats, status, export, parse --from;
the read side's parameter binding; a crawl that loses its connections mid-way carries on.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from hypothesis import given
from hypothesis import strategies as st

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.errors import QueryError
from crawler.store.pg_read import PgReader, bind
from tests.conftest import RunCli
from tests.databases import rows, scalar
from tests.pgserver import PostgresServer
from tests.sites import html_page
from tests.spiders import FollowAllSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}
SPIDER = "tests/spiders.py:FollowAllSpider"


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture
async def crawled(follow_site: BaseTestServer, postgres: str, run_cli: RunCli) -> str:
    """A PostgreSQL database holding a finished crawl of the 60-page site, made by the CLI."""
    start = str(follow_site.make_url("/p/0"))
    done = await run_cli(
        "crawl", SPIDER, "-o", postgres, "--start-url", start,
        "-s", "allow_private_addresses=true", "-s", "store_body=true",
        "-s", "progress_interval=60",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert postgres.split("@")[-1] in done.stderr  # "results: <url>"
    return postgres


async def test_query_runs_sql_read_only(crawled: str, run_cli: RunCli) -> None:
    done = await run_cli(
        "query", crawled, "SELECT count(*) AS n, min(data ->> 'number') FROM items", "-f", "json"
    )
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)[0]["n"] == 60
    named = await run_cli(
        "query", crawled, "SELECT url FROM pages WHERE url LIKE :p", "-p", "p=%/p/7", "-f", "csv"
    )
    assert named.stdout.splitlines()[1].endswith("/p/7")
    refused = await run_cli("query", crawled, "DELETE FROM items")
    assert refused.code == 2
    assert "read-only" in refused.stderr and "--write" in refused.stderr
    assert scalar(crawled, "SELECT count(*) FROM items") == 60
    bad = await run_cli("query", crawled, "SELECT nonsense FROM items")
    assert bad.code == 2 and bad.stderr.startswith("error: SQL error")
    written = await run_cli("query", crawled, "DELETE FROM errors WHERE id < 0", "--write")
    assert written.code == 0 and "0 rows changed" in written.stderr


async def test_stats_status_and_export_read_a_url(crawled: str, run_cli: RunCli) -> None:
    stats = await run_cli("stats", crawled, "-f", "json")
    assert stats.code == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert report["pages"] == 60 and report["items"] == 60
    assert report["requests_by_state"]["done"] == 60
    assert report["duration_s"] > 0
    status = await run_cli("status", crawled, "-f", "json")
    state = json.loads(status.stdout)
    assert state["requests"]["done"] == 60 and state["in_flight"] == 0
    assert state["latest_run"]["status"] == "finished"
    export = await run_cli("export", crawled, "-t", "page_item")
    assert export.code == 0, export.stderr
    exported = [json.loads(line) for line in export.stdout.splitlines()]
    assert sorted(item["number"] for item in exported) == list(range(60))


async def test_parse_from_reads_a_stored_page(
    crawled: str, follow_site: BaseTestServer, run_cli: RunCli
) -> None:
    url = str(follow_site.make_url("/p/3"))
    done = await run_cli("parse", SPIDER, url, "--from", crawled, "-f", "json")
    assert done.code == 0, done.stderr
    page = json.loads(done.stdout)
    assert page["status"] == 200 and len(page["items"]) == 1


async def test_not_a_crawl_database_and_unreachable_server_are_one_line(
    postgres: str, run_cli: RunCli
) -> None:
    empty = await run_cli("stats", postgres)
    assert empty.code == 2 and "is not a crawl database" in empty.stderr
    port = postgres.rsplit(":", 1)[1].split("/")[0]
    nowhere = postgres.replace(f":{port}/", ":1/")
    unreachable = await run_cli("status", nowhere)
    assert unreachable.code == 1 and unreachable.stderr.startswith("error: cannot read")
    assert "Traceback" not in unreachable.stderr


async def test_database_setting_in_config_toml(
    follow_site: BaseTestServer, postgres: str, run_cli: RunCli, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    password_url = postgres.replace("postgres@", "postgres:secret@")  # trust auth ignores it
    config.write_text(f'[crawler]\ndatabase = "{password_url}"\nallow_private_addresses = true\n')
    start = str(follow_site.make_url("/p/0"))
    done = await run_cli(
        "crawl", SPIDER, "--config", str(config), "--start-url", start, "--max-pages", "5"
    )
    assert done.code == 0, done.stderr
    assert scalar(postgres, "SELECT count(*) FROM pages") == 5
    stored = str(scalar(postgres, "SELECT settings ->> 'database' FROM crawls"))
    assert "secret" not in stored and "***" in stored


async def test_a_crawl_survives_losing_its_connections(postgres: str) -> None:
    """The server drops every connection of the crawl twice mid-way: it reconnects, and
    every page is stored once."""
    served: list[str] = []
    milestones = {20: asyncio.Event(), 40: asyncio.Event()}

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        served.append(request.path)
        if (reached := milestones.get(len(served))) is not None:
            reached.set()
        await asyncio.sleep(0.02)
        links = "".join(f'<a href="/p/{m}">{m}</a>' for m in (2 * n + 1, 2 * n + 2) if m < 80)
        return web.Response(text=html_page(links), content_type="text/html")

    app = web.Application()
    app.router.add_get("/p/{n}", page)

    async def cut_connections() -> None:
        admin = await asyncpg.connect(postgres)
        try:
            for reached in milestones.values():
                await reached.wait()
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'crawler' AND pid != pg_backend_pid()"
                )
        finally:
            await admin.close()

    async with TestServer(app, host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/p/0"))])
        settings = {**FAST, "allow_private_addresses": True, "concurrency": 4}
        cutter = asyncio.create_task(cut_connections())
        stats = await crawl(spider, db=postgres, settings=settings)
        await cutter
    assert stats["pages"] == 80
    assert sorted(served) == sorted(f"/p/{n}" for n in range(80))  # none fetched twice
    assert rows(postgres, "SELECT state, count(*) FROM requests GROUP BY state") == [("done", 80)]
    assert scalar(postgres, "SELECT count(DISTINCT request_id) FROM pages") == 80
    assert scalar(postgres, "SELECT count(*) FROM pages") == 80


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00")))
def test_bound_strings_come_back_as_given(postgres_server: PostgresServer, text: str) -> None:
    reader = PgReader(postgres_server.url())
    try:
        assert reader.execute("SELECT ? AS v, '?' AS q", [text]).fetchall() == [(text, "?")]
        assert reader.execute("SELECT :v::text, ':v'", {"v": text}).fetchall() == [(text, ":v")]
    finally:
        reader.close()


def test_binding_refuses_what_it_cannot_bind() -> None:
    with pytest.raises(QueryError, match="not enough"):
        bind("SELECT ?, ?", [1])
    with pytest.raises(QueryError, match="no value for :b"):
        bind("SELECT :a, :b", {"a": 1})
    assert bind("SELECT ?, ?, ?, ?", [None, 2.5, b"\x00\x01", True]) == (
        "SELECT NULL, 2.5, '\\x0001'::bytea, TRUE"
    )
    assert bind("SELECT x::int FROM t WHERE y = ? -- why?", ["it's"]) == (
        "SELECT x::int FROM t WHERE y = 'it''s' -- why?"
    )


async def test_reparse_replaces_the_items_of_a_url(crawled: str, run_cli: RunCli) -> None:
    before = scalar(crawled, "SELECT max(id) FROM items")
    done = await run_cli("reparse", SPIDER, crawled, "-f", "json")
    assert done.code == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["pages"] == 60 and summary["items"] == 60
    assert scalar(crawled, "SELECT count(*) FROM items") == 60
    assert scalar(crawled, "SELECT min(id) FROM items") > before  # written again
    numbers = rows(crawled, "SELECT data ->> 'number' FROM items ORDER BY id")
    assert sorted(int(str(n)) for (n,) in numbers) == list(range(60))
    stats = scalar(crawled, "SELECT stats ->> 'items' FROM crawls ORDER BY id LIMIT 1")
    assert str(stats) == "60"
    other = await run_cli("reparse", "tests/spiders.py:RaisingSpider", crawled)
    assert other.code == 2 and "holds a crawl of spider" in other.stderr


async def test_reparse_on_a_url_rebuilds_deduplication_keys(crawled: str, run_cli: RunCli) -> None:
    keyed = "tests/spiders.py:KeyedFollowAllSpider"
    for _ in range(2):  # keys of replaced items must not make their new versions duplicates
        done = await run_cli("reparse", keyed, crawled, "-f", "json")
        assert done.code == 0, done.stderr
        assert json.loads(done.stdout)["items"] == 60
        assert scalar(crawled, "SELECT count(*) FROM item_keys") == 60
        # Each key names its page, as on SQLite, so that a re-crawl of that page can retire it.
        assert scalar(crawled, "SELECT count(*) FROM item_keys WHERE request_id IS NULL") == 0


async def test_a_recrawl_on_a_url_refetches_conditionally(
    crawled: str, follow_site: BaseTestServer
) -> None:
    spider = with_start_urls(FollowAllSpider, [str(follow_site.make_url("/p/0"))])
    settings = {**FAST, "allow_private_addresses": True, "store_body": True}
    stats = await crawl(spider, db=crawled, settings=settings, recrawl=True)
    assert stats["requeued"] == 60
    assert stats["refetched"] == {"unchanged": 60}  # the same bodies: nothing parsed again
    assert scalar(crawled, "SELECT count(*) FROM fetches") == 120
    assert scalar(crawled, "SELECT count(*) FROM fetches WHERE changed = 0") == 60
    assert scalar(crawled, "SELECT count(*) FROM items") == 60
    assert scalar(crawled, "SELECT count(*) FROM item_versions") == 60
