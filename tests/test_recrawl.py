"""Re-crawls over three and more consecutive runs of a shop whose pages change between runs:
due pages are re-queued with their callbacks, fetched conditionally, parsed only when they
changed (304 or an equal body hash means unchanged), their items replaced with the old ones
kept in `item_history`, and every fetch recorded in `fetches`."""

from __future__ import annotations

import gzip
import sqlite3
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from crawler import ConfigError, Response, SitemapSpider, crawl, text_of
from crawler.cli.common import with_start_urls
from crawler.demo import catalogue_app
from crawler.demo.books import generate
from crawler.demo.days import changed_on, page_count
from crawler.durations import parse_duration
from crawler.settings import load_settings
from crawler.spider.discovery import find_spider
from crawler.store.refresh import fetched_hosts, requeue_due
from crawler.store.schema import open_database
from tests.conftest import ROOT, RunCli, rows, scalar
from tests.recrawl_site import Shop, ShopSpider, shop_app
from tests.sites import html_page

PRODUCTS = 10


@pytest.fixture
async def shop() -> AsyncIterator[tuple[Shop, type[ShopSpider]]]:
    state = Shop(products=PRODUCTS)
    async with TestServer(shop_app(state), host="127.0.0.1") as server:
        base = str(server.make_url("/"))

        class Spider(ShopSpider):
            name = "shop"
            start_urls = (base,)
            allowed_domains = ("127.0.0.1",)

        yield state, Spider


async def run(spider: type[ShopSpider], db: Path, **kwargs: Any) -> dict[str, Any]:
    return await crawl(spider, db=db, **kwargs)


def prices(db: Path) -> dict[str, float]:
    return dict(rows(db, "SELECT sku, price FROM product"))


def price_history(db: Path, sku: str) -> list[float]:
    """The README's query: every version of one product's price, oldest first."""
    found = rows(
        db,
        "SELECT data ->> 'price' FROM item_versions WHERE type = 'product' "
        "AND data ->> 'sku' = ? ORDER BY valid_from, item_id",
        (sku,),
    )
    return [float(price) for (price,) in found]


async def test_three_runs_fetch_everything_conditionally_and_parse_only_what_changed(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop
    first = await run(spider, db_path)
    assert first["pages"] == PRODUCTS + 1 and first["items"] == PRODUCTS
    assert first["refetched"] == {} and first["requeued"] == 0

    # Day 2: two products change, the index lists a new one.
    state.change(2, 5)
    state.extra.append(PRODUCTS)
    state.hits.clear()
    second = await run(spider, db_path, recrawl=True)
    assert second["requeued"] == PRODUCTS + 1
    assert second["refetched"] == {"changed": 3, "unchanged": PRODUCTS - 2}
    assert second["items"] == 3  # the two changed products and the new one
    refetches = [hit for hit in state.hits if hit.path != f"/p/{PRODUCTS}"]
    assert len(refetches) == PRODUCTS + 1
    assert all(hit.if_none_match and hit.if_modified_since for hit in refetches)
    assert sorted(hit.path for hit in refetches if hit.status == 200) == ["/", "/p/2", "/p/5"]
    assert state.hits_of(f"/p/{PRODUCTS}")[0].if_none_match is None  # a new page: plain GET

    # Day 3: one of them changes again, another one for the first time.
    state.change(5, 7)
    state.hits.clear()
    third = await run(spider, db_path, recrawl=True)
    assert third["requeued"] == PRODUCTS + 2
    assert third["refetched"] == {"changed": 2, "unchanged": PRODUCTS}
    assert third["items"] == 2
    assert all(hit.if_none_match for hit in state.hits)

    # A plain SELECT sees the current state; the history keeps every earlier version.
    current = prices(db_path)
    assert len(current) == PRODUCTS + 1
    assert current == {f"SKU-{n}": state.price(n) for n in range(PRODUCTS + 1)}
    assert scalar(db_path, "SELECT count(*) FROM items") == PRODUCTS + 1
    assert price_history(db_path, "SKU-5") == [15.0, 15.5, 16.0]
    assert price_history(db_path, "SKU-2") == [12.0, 12.5]
    assert price_history(db_path, "SKU-1") == [11.0]
    assert rows(db_path, "SELECT reason, count(*) FROM item_history GROUP BY reason") == [
        ("changed", 4)
    ]
    # Every response is in `fetches`: one per page and run, changed or not.
    per_page = rows(
        db_path,
        "SELECT r.url, group_concat(f.status || ':' || f.changed, ' ') FROM fetches AS f "
        "JOIN requests AS r ON r.id = f.request_id GROUP BY r.id ORDER BY f.request_id",
    )
    history = dict(per_page)
    assert history[str(spider.start_urls[0]) + "p/5"] == "200:1 200:1 200:1"
    assert history[str(spider.start_urls[0]) + "p/1"] == "200:1 304:0 304:0"
    assert scalar(db_path, "SELECT count(*) FROM fetches WHERE conditional = 1") == (
        PRODUCTS + 1
    ) + (PRODUCTS + 2)
    # A page's latest fetch with new content is the page as stored (copied from its row).
    differing = (
        "SELECT count(*) FROM pages AS p JOIN fetches AS f ON f.id = (SELECT max(id) FROM "
        "fetches WHERE request_id = p.request_id AND changed = 1) WHERE f.url != p.final_url "
        "OR f.status != p.status OR f.size_bytes != p.size_bytes OR f.body_hash != p.body_hash"
    )
    assert scalar(db_path, differing) == 0
    # The pages table holds the current page of each request, last fetched now.
    assert scalar(db_path, "SELECT count(*) FROM pages") == PRODUCTS + 2
    last_run = scalar(db_path, "SELECT max(id) FROM crawls")
    assert scalar(db_path, "SELECT count(*) FROM pages WHERE crawl_id != ?", (last_run,)) == 0


async def test_a_server_that_ignores_validators_is_compared_by_body_hash(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop
    state.honour_validators = False
    await run(spider, db_path)
    for day in (1, 2):
        state.change(day)
        state.hits.clear()
        summary = await run(spider, db_path, recrawl=True)
        assert summary["refetched"] == {"changed": 1, "unchanged": PRODUCTS}
        assert summary["items"] == 1
        assert {hit.status for hit in state.hits} == {200}
        assert all(hit.if_none_match for hit in state.hits)  # sent, and ignored
    assert scalar(db_path, "SELECT count(*) FROM fetches WHERE status = 304") == 0
    assert scalar(db_path, "SELECT count(*) FROM fetches WHERE changed = 0") == 2 * PRODUCTS
    assert price_history(db_path, "SKU-1") == [11.0, 11.5]
    assert prices(db_path)["SKU-2"] == 12.5


async def test_pages_stored_with_the_former_crc_hash_are_still_recognised_unchanged(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    """Pages hashed before body_hash became XXH3 (CRC-32 and length) are compared by that."""
    state, spider = shop
    state.honour_validators = False
    await run(spider, db_path, settings={"store_body": True})
    with sqlite3.connect(db_path) as conn:
        for request_id, body in conn.execute("SELECT request_id, body FROM pages").fetchall():
            content = gzip.decompress(body)
            crc = (len(content) << 32) | zlib.crc32(content)
            crc = crc - (1 << 64) if crc >= 1 << 63 else crc
            conn.execute("UPDATE pages SET body_hash = ? WHERE request_id = ?", (crc, request_id))
    assert scalar(db_path, "SELECT count(*) FROM pages WHERE body_hash > 1 << 32") > 0
    state.change(1)
    summary = await run(spider, db_path, settings={"store_body": True}, recrawl=True)
    assert summary["refetched"] == {"changed": 1, "unchanged": PRODUCTS}
    assert price_history(db_path, "SKU-1") == [11.0, 11.5]


async def test_refresh_after_re_queues_only_pages_fetched_longer_ago(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop
    await run(spider, db_path)
    state.hits.clear()
    again = await run(spider, db_path, settings={"refresh_after": "12h"})
    assert again["requeued"] == 0 and again["pages"] == 0 and state.hits == []
    # Three product pages were last fetched two days ago.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE requests SET finished_at = '2000-01-01T00:00:00.000+00:00' "
            "WHERE url LIKE '%/p/1' OR url LIKE '%/p/2' OR url LIKE '%/p/3'"
        )
    state.change(3)
    summary = await run(spider, db_path, settings={"refresh_after": "1d"})
    assert summary["requeued"] == 3
    assert summary["refetched"] == {"changed": 1, "unchanged": 2}
    assert sorted(hit.path for hit in state.hits) == ["/p/1", "/p/2", "/p/3"]
    # Due again only after refresh_after: the next run has nothing to do.
    state.hits.clear()
    assert (await run(spider, db_path, settings={"refresh_after": "1d"}))["requeued"] == 0
    assert state.hits == []


async def test_a_page_that_is_gone_moves_its_items_to_the_history(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop
    await run(spider, db_path)
    state.gone.add(4)
    summary = await run(spider, db_path, recrawl=True)
    assert summary["refetched"] == {"changed": 1, "unchanged": PRODUCTS}
    assert "SKU-4" not in prices(db_path)
    assert rows(db_path, "SELECT reason, data ->> 'sku' FROM item_history") == [("gone", "SKU-4")]
    assert scalar(db_path, "SELECT status FROM pages WHERE url LIKE '%/p/4'") == 404
    # It is checked again on the next re-crawl, and comes back when the page does.
    state.gone.clear()
    state.change(4)
    back = await run(spider, db_path, recrawl=True)
    assert back["refetched"] == {"changed": 1, "unchanged": PRODUCTS}
    assert prices(db_path)["SKU-4"] == 14.5
    assert price_history(db_path, "SKU-4") == [14.0, 14.5]


async def test_changed_pages_replace_their_links_and_typed_rows(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop
    await run(spider, db_path)
    links_before = scalar(db_path, "SELECT count(*) FROM links")
    state.extra.extend([PRODUCTS, PRODUCTS + 1])
    await run(spider, db_path, recrawl=True)
    # The index was parsed again: its links are today's, not yesterday's and today's.
    assert scalar(db_path, "SELECT count(*) FROM links") == links_before + 2
    assert scalar(db_path, "SELECT count(*) FROM product") == PRODUCTS + 2
    ids = rows(db_path, "SELECT item_id FROM product EXCEPT SELECT id FROM items")
    assert ids == []


async def test_headers_and_status_line_are_kept_with_stored_bodies(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop
    await run(spider, db_path, settings={"store_body": True})
    state.change(1)
    await run(spider, db_path, settings={"store_body": True}, recrawl=True)
    # The body in `pages` is the one of the request's latest fetch with changed = 1.
    found = rows(
        db_path,
        "SELECT f.http_version, f.reason, f.headers, f.request_headers, f.status "
        "FROM pages AS p JOIN fetches AS f ON f.id = (SELECT max(id) FROM fetches "
        "WHERE request_id = p.request_id AND changed = 1) WHERE p.url LIKE '%/p/1'",
    )
    version, reason, headers, sent, status = found[0]
    assert (version, reason, status) == ("1.1", "OK", 200)
    assert '"ETag"' in headers and "Content-Type" in headers
    assert "If-None-Match" in sent and "User-Agent" in sent
    assert scalar(db_path, "SELECT count(*) FROM fetches WHERE headers IS NULL") == 0


async def test_recrawl_on_the_command_line_prints_what_it_re_fetched(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path, run_cli: RunCli, tmp_path: Path
) -> None:
    state, spider = shop
    spider_file = tmp_path / "shop_spider.py"
    spider_file.write_text(
        "from tests.recrawl_site import ShopSpider\n\n"
        "class Shop(ShopSpider):\n"
        "    name = 'shop'\n"
        f"    start_urls = ({spider.start_urls[0]!r},)\n"
        "    allowed_domains = ('127.0.0.1',)\n"
    )
    first = await run_cli("crawl", f"{spider_file}:Shop", "-o", str(db_path))
    assert first.code == 0, first.stderr
    state.change(3)
    second = await run_cli("crawl", f"{spider_file}:Shop", "-o", str(db_path), "--recrawl")
    assert second.code == 0, second.stderr
    assert "re-fetched" in second.stdout and "unchanged: 10" in second.stdout
    assert "changed: 1" in second.stdout
    bad = await run_cli(
        "crawl", f"{spider_file}:Shop", "-o", str(db_path), "-s", "refresh_after=soon"
    )
    assert bad.code == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error:")
    assert "refresh_after" in bad.stderr


class _Dated(SitemapSpider):
    name = "dated"
    sitemap_rules = (("/page/", "parse_page"),)
    settings: ClassVar[dict[str, object]] = dict(ShopSpider.settings)

    async def parse_page(self, response: Response) -> AsyncIterator[dict[str, str]]:
        yield {"url": response.url, "text": text_of(response.css_first("p"))}


async def test_sitemap_lastmod_decides_when_a_page_is_fetched_again(db_path: Path) -> None:
    old = "2020-01-01T00:00:00+00:00"
    lastmods = {"a": old, "b": old}
    texts = {"a": "first a", "b": "first b"}
    hits: list[str] = []

    async def sitemap(request: web.Request) -> web.Response:
        hits.append(request.path)
        urls = "".join(
            f"<url><loc>{request.url.origin()}/page/{key}</loc><lastmod>{mod}</lastmod></url>"
            for key, mod in sorted(lastmods.items())
        )
        body = f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
        return web.Response(text=body, content_type="application/xml")

    async def page(request: web.Request) -> web.Response:
        hits.append(request.path)
        key = request.match_info["key"]
        return web.Response(text=html_page(f"<p>{texts[key]}</p>"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/sitemap.xml", sitemap)
    app.router.add_get("/page/{key}", page)
    async with TestServer(app, host="127.0.0.1") as server:

        class Dated(_Dated):
            name = "dated"
            sitemap_urls = (str(server.make_url("/sitemap.xml")),)
            allowed_domains = ("127.0.0.1",)

        await crawl(Dated, db=db_path)
        assert sorted(hits) == ["/page/a", "/page/b", "/sitemap.xml"]
        # Day 2: nothing is dated after the last fetch: only the sitemap is fetched again.
        hits.clear()
        texts["b"] = "second b"  # changed, but the sitemap does not say so yet
        second = await crawl(Dated, db=db_path, recrawl=True)
        assert hits == ["/sitemap.xml"] and second["requeued"] == 1
        # Day 3: the sitemap dates b after its last fetch: b alone is fetched and parsed.
        hits.clear()
        lastmods["b"] = datetime.now(UTC).isoformat()
        third = await crawl(Dated, db=db_path, recrawl=True)
        assert sorted(hits) == ["/page/b", "/sitemap.xml"]
        assert third["refetched"] == {"changed": 2}
    texts_stored = dict(rows(db_path, "SELECT data ->> 'url', data ->> 'text' FROM items"))
    assert sorted(texts_stored.values()) == ["first a", "second b"]
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE lastmod IS NOT NULL") == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0),
     ("7d", 604800.0), ("2w", 1209600.0), ("1d12h", 129600.0), ("1.5h", 5400.0),
     (" 2 H ", 7200.0), (3600, 3600.0), (0.5, 0.5)],
)  # fmt: skip
def test_durations_are_read_in_every_unit(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert load_settings(overrides={"refresh_after": text}).settings.refresh_after == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "-1h", "1x", "h", "", "inf", "nan", True, None])
def test_a_bad_duration_is_one_clear_error(text: object) -> None:
    assert parse_duration(text) is None
    with pytest.raises(ConfigError, match="'refresh_after' must be a duration"):
        load_settings(config={"refresh_after": text})


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from("smhdwSMHDW")), min_size=1))
def test_any_sum_of_units_is_its_seconds(parts: list[tuple[int, str]]) -> None:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert parse_duration(text) == sum(n * units[u.lower()] for n, u in parts)


@given(st.text())
def test_any_text_is_a_duration_or_none_never_an_exception(text: str) -> None:
    seconds = parse_duration(text)
    assert seconds is None or seconds >= 0


def _daily_queries() -> list[str]:
    """The SQL statements of the README's "Crawls that run every day" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Crawls that run every day", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    statements, current = [], ""
    for line in block.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


async def test_the_demo_catalogues_third_day_fetches_all_conditionally_parses_the_changed(
    db_path: Path,
) -> None:
    catalogue = generate(100, 7)
    books_spider = find_spider("books")
    settings = {"autothrottle": False, "progress_interval": 60.0}
    port = 0
    summaries = []
    for day in range(3):
        async with TestServer(catalogue_app(100, day=day), host="127.0.0.1", port=port) as site:
            port = site.port or 0
            spider = with_start_urls(books_spider, [str(site.make_url("/"))])
            summaries.append(await crawl(spider, db=db_path, settings=settings, recrawl=day > 0))
    pages = summaries[0]["pages"]
    assert pages == page_count(catalogue) and summaries[0]["items"] == 100
    changed = changed_on(catalogue, 2)
    assert len(changed) == round(pages * 0.05)
    third = summaries[2]
    assert third["requeued"] == pages
    assert third["refetched"] == {"changed": len(changed), "unchanged": pages - len(changed)}
    assert third["items"] == len(changed) and third["statuses"] == {
        "200": len(changed),
        "304": pages - len(changed),
    }
    assert rows(
        db_path, "SELECT count(*), sum(conditional), sum(changed) FROM fetches WHERE crawl_id = 3"
    ) == [(pages, pages, len(changed))]
    # The README's queries, on the third day.
    by_number = {book.number: book for book in catalogue.books}
    changed_paths = {by_number[n].path for n in changed}
    what_changed, items_changed, price_history, fetches_of = _daily_queries()
    urls = [url for url, _, _ in rows(db_path, what_changed)]
    assert {url.split(str(port), 1)[1] for url in urls} == changed_paths
    before_and_now = rows(db_path, items_changed)
    assert len(before_and_now) == len(changed)
    assert all(before != now for _, before, now in before_and_now)
    twice = sorted(changed & changed_on(catalogue, 1)) or sorted(changed)
    upc = by_number[twice[0]].upc
    history = named(db_path, price_history, upc=upc)
    assert len(history) == (3 if changed_on(catalogue, 1) & changed else 2)
    assert history[-1][1] is None and all(valid_to for _, valid_to, _, _ in history[:-1])
    fetched = named(db_path, fetches_of, url=urls[0])
    steps = [(status, conditional, change) for _, status, conditional, change, _ in fetched]
    assert steps[0] == (200, 0, 1) and steps[-1] == (200, 1, 1) and len(steps) == 3


def named(db: Path, sql: str, **params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def test_de_duplicated_items_of_a_changed_page_are_replaced_not_dropped(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    state, spider = shop

    class Deduped(spider):  # type: ignore[valid-type,misc]
        name = "shop"
        dedupe_items_by = ("sku",)

    await run(Deduped, db_path)
    state.change(6)
    summary = await run(Deduped, db_path, recrawl=True)
    assert summary["items"] == 1 and summary["items_dropped"] == {}
    assert prices(db_path)["SKU-6"] == 16.5
    assert scalar(db_path, "SELECT count(*) FROM item_keys") == PRODUCTS
    assert scalar(db_path, "SELECT count(*) FROM item_keys WHERE request_id IS NULL") == 0


async def test_a_host_with_its_own_refresh_after_is_due_on_its_own_cutoff(
    shop: tuple[Shop, type[ShopSpider]], db_path: Path
) -> None:
    _, spider = shop
    await run(spider, db_path)
    soon, never = "9999-01-01T00:00:00.000+00:00", ""
    conn = await open_database(db_path)
    try:
        assert await fetched_hosts(conn) == ["127.0.0.1"]
        # The crawl-wide cutoff is "never", the host's own one is in the future: all due.
        assert await requeue_due(conn, cutoff=None, host_cutoffs={"127.0.0.1": soon}) == 11
        await conn.execute("UPDATE requests SET state = 'done'")
        # A host whose own refresh_after is 0 is never due, whatever the crawl-wide value.
        assert await requeue_due(conn, cutoff=soon, host_cutoffs={"127.0.0.1": never}) == 0
        assert await requeue_due(conn, cutoff=soon, host_cutoffs={"other.test": never}) == 11
    finally:
        await conn.close()
