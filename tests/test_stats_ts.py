"""The crawl's time series (`stats_ts`) and host snapshot (`host_stats`): written by the
writer inside its batches (crawler.store.samples), counting exactly what the tables hold."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.cli.dashboard import read_state
from crawler.fetch.politeness import Hosts
from crawler.records import ErrorRecord, PageRecord, PageResult, RequestState, utc_now
from crawler.settings import Settings
from crawler.stats import Stats
from crawler.store import samples
from crawler.store.runs import start_run
from crawler.store.samples import HOSTS_PER_SAMPLE, Sampler
from crawler.store.schema import open_database
from tests.conftest import rows, scalar
from tests.sites import html_page, tree_app
from tests.spiders import FollowAllSpider, RaisingSpider

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}
SAMPLE_COLUMNS = "pages, items, errors, failed, bytes, in_flight, elapsed_s, pages_per_s"


async def test_the_time_series_counts_what_the_tables_hold(db_path: Path) -> None:
    async with TestServer(tree_app(120, delay=0.02), host="127.0.0.1") as site:
        spider = with_start_urls(RaisingSpider, [str(site.make_url("/p/0"))])
        settings = {**FAST, "stats_interval": 0.05, "concurrency": 4}
        await crawl(spider, db=db_path, settings=settings)
    series = rows(db_path, f"SELECT {SAMPLE_COLUMNS} FROM stats_ts WHERE crawl_id = 1 ORDER BY id")
    assert len(series) >= 3
    for before, after in itertools.pairwise(series):
        assert all(b <= a for b, a in zip(before[:5], after[:5], strict=True))
        assert after[6] > before[6]  # elapsed
    assert all(row[7] >= 0 for row in series)
    last = series[-1]
    counted = rows(
        db_path,
        "SELECT (SELECT count(*) FROM pages), (SELECT count(*) FROM items), "
        "(SELECT count(*) FROM errors), "
        "(SELECT count(*) FROM requests WHERE state = 'failed'), "
        "(SELECT sum(size_bytes) FROM pages)",
    )[0]
    assert last[:5] == counted and counted[0] == 120 and counted[2] > 0
    assert last[5] == 0  # nothing in flight at the end
    by_kind = dict(rows(db_path, "SELECT kind, count(*) FROM errors GROUP BY kind"))
    assert json.loads(scalar(db_path, "SELECT errors_by_kind FROM stats_ts ORDER BY id DESC")) == (
        by_kind
    )
    statuses = json.loads(scalar(db_path, "SELECT statuses FROM stats_ts ORDER BY id DESC"))
    assert statuses == {"200": 120}
    host = rows(db_path, "SELECT host, pages, errors, failed, last_status, avg_ms FROM host_stats")
    mean_ms = scalar(db_path, "SELECT avg(elapsed_ms) FROM pages")
    assert host[0][:5] == ("127.0.0.1", 120, counted[2], counted[3], 200)
    assert host[0][5] == pytest.approx(mean_ms, abs=0.01) and len(host) == 1


async def test_a_sample_is_written_while_nothing_is_committed(db_path: Path) -> None:
    """The writer is idle while the only request waits for a slow answer: the series goes
    on, and shows it in flight."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html_page('<a href="/slow">slow</a>'), content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text=html_page("done"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/slow", slow)
    async with TestServer(app, host="127.0.0.1") as site:
        spider = with_start_urls(FollowAllSpider, [str(site.make_url("/"))])
        await crawl(spider, db=db_path, settings={**FAST, "stats_interval": 0.1})
    waiting = rows(db_path, "SELECT pages FROM stats_ts WHERE in_flight = 1 AND pages = 1")
    assert len(waiting) >= 4
    assert scalar(db_path, "SELECT pages FROM stats_ts ORDER BY id DESC") == 2


async def test_no_samples_when_the_interval_is_zero(db_path: Path) -> None:
    async with TestServer(tree_app(10), host="127.0.0.1") as site:
        spider = with_start_urls(FollowAllSpider, [str(site.make_url("/p/0"))])
        await crawl(spider, db=db_path, settings={**FAST, "stats_interval": 0})
    assert scalar(db_path, "SELECT count(*) FROM stats_ts") == 0
    assert scalar(db_path, "SELECT count(*) FROM host_stats") == 0
    state = read_state(db_path, None)  # the dashboard shows the summary stored at the end
    assert state["totals"]["pages"] == 10 and state["sample_id"] is None


async def test_each_run_has_its_own_series(db_path: Path) -> None:
    async with TestServer(tree_app(40), host="127.0.0.1") as site:
        spider = with_start_urls(FollowAllSpider, [str(site.make_url("/p/0"))])
        await crawl(spider, db=db_path, settings={**FAST, "max_pages": 15})
        await crawl(spider, db=db_path, settings=FAST)
    for run in (1, 2):
        last = scalar(
            db_path, "SELECT pages FROM stats_ts WHERE crawl_id = ? ORDER BY id DESC", (run,)
        )
        assert last == scalar(db_path, "SELECT count(*) FROM pages WHERE crawl_id = ?", (run,))
    assert rows(db_path, "SELECT crawl_id, pages FROM host_stats ORDER BY crawl_id") == [
        (1, 15),
        (2, 25),
    ]


def result(host: str, status: int | None, *, errors: int = 0, ms: float = 5.0) -> PageResult:
    url = f"http://{host}/x"
    page = None
    if status is not None:
        page = PageRecord(
            url=url,
            final_url=url,
            status=status,
            content_type="text/html",
            encoding=None,
            size_bytes=10,
            depth=0,
            elapsed_ms=ms,
            fetched_at=utc_now(),
            body=None,
        )
    failures = [
        ErrorRecord(
            url=url,
            kind="http_status",
            message="HTTP 503",
            attempt=i + 1,
            callback=None,
            created_at=utc_now(),
        )
        for i in range(errors)
    ]
    failed = status is None or status >= 400
    state = RequestState.FAILED if failed else RequestState.DONE
    return PageResult(request_id=1, url=url, state=state, page=page, errors=failures)


async def test_hosts_are_shown_throttled_then_failing_then_slowest(db_path: Path) -> None:
    conn = await open_database(db_path)
    run = await start_run(conn, spider="s", settings={}, fresh=False)
    hosts = Hosts(Settings(), clock=lambda: 100.0)
    sampler = Sampler(run_id=run, stats=Stats(), interval=1.0, hosts=hosts, clock=lambda: 1e9)
    sampler.observe([result("fine.test", 200), result("slow.test", 200, ms=900.0)])
    sampler.observe([result("failing.test", None, errors=0), result("busy.test", 200)])
    sampler.observe([result("retried.test", 200, errors=2)])  # two 503s, then a 200
    hosts["paused.test"].throttle.blocked_until = 130.0  # a Retry-After of 30 s
    hosts.reserve("paused.test")
    hosts.reserve("busy.test")
    sample = sampler.take()
    assert sample is not None
    await sample.script.run_as_transaction(conn)
    sampler.written(sample)
    await conn.close()
    shown = read_state(db_path, None)["hosts"]
    order = [h["host"] for h in shown]
    assert order == [
        "paused.test",
        "retried.test",
        "failing.test",
        "slow.test",
        "busy.test",
        "fine.test",
    ]
    paused = shown[0]
    assert (paused["paused_s"], paused["in_flight"], paused["pages"]) == (30.0, 1, 0)
    assert shown[1]["throttled"] == 2 and shown[1]["errors"] == 2
    assert sampler.take() is None  # the next sample is an interval away


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.sampled_from([200, 404, 429, 503, None])),
        max_size=60,
    )
)
def test_host_counters_are_bounded_and_exact(results: list[tuple[str, int | None]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(samples, "MAX_HOSTS", 5)
        sampler = Sampler(run_id=1, stats=Stats(), interval=1.0, clock=lambda: 1e9)
        for host, status in results:
            sampler.observe([result(f"{host}.test", status)])
        sample = sampler.take()
    assert sample is not None
    kept: dict[object, Sequence[object]] = {
        row[1]: row
        for step in sample.script._steps[1:]
        if isinstance(step, tuple)
        for row in step[1]
    }
    recent = list(dict.fromkeys(f"{h}.test" for h, _ in reversed(results)))[:5]
    assert set(kept) == set(recent) and len(kept) <= HOSTS_PER_SAMPLE
    for name, row in kept.items():
        mine = [s for h, s in results if f"{h}.test" == name]
        if len(set(h for h, _ in results)) <= 5:  # never forgotten: the counts are whole
            assert row[7] == sum(s is not None for s in mine)  # pages
            assert row[10] == sum(s in (429, 503) for s in mine)  # throttled
            assert row[9] == sum(s is None or s >= 400 for s in mine)  # failed
