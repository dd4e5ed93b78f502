"""The crawl's time series (`stats_ts`) and host snapshot (`host_stats`): written by the
writer inside its batches (crawler.store.samples), counting exactly what the tables hold."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.cli.dashboard import read_state
from crawler.engine import crawl as crawl_module
from crawler.engine import recrawl
from crawler.fetch.outcomes import Fetched
from crawler.fetch.politeness import Hosts
from crawler.records import (
    MAX_ELAPSED_MS,
    ErrorRecord,
    PageRecord,
    PageResult,
    RequestState,
    utc_now,
)
from crawler.settings import Settings, load_settings
from crawler.stats import Stats
from crawler.store import samples
from crawler.store.runs import start_run
from crawler.store.samples import HOSTS_PER_SAMPLE, Sampler
from crawler.store.schema import open_database
from crawler.store.writer import Storage
from tests.conftest import rows, scalar
from tests.databases import Target, is_postgres
from tests.sites import html_page, tree_app
from tests.spiders import FollowAllSpider, RaisingSpider
from tests.test_error_boundary import write_all

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


async def _sampling_writer(db: Path, **overrides: object) -> tuple[Storage, Stats, Any]:
    """The real writer on a real file, a sample in every batch (`stats_interval` tiny)."""
    conn = await open_database(db)
    run = await start_run(conn, spider="s", settings={}, fresh=False)
    await conn.executemany(
        "INSERT INTO requests (url, fingerprint, host, depth, state, crawl_id, discovered_at)"
        " VALUES (?, ?, ?, 0, 'pending', ?, '')",
        [(f"http://h{n % 3}.test/{n}", n, f"h{n % 3}.test", run) for n in range(60)],
    )
    await conn.commit()
    stats = Stats()
    settings = load_settings(overrides={"stats_interval": 1e-6, **overrides}).settings
    storage = Storage(conn, run_id=run, settings=settings, stats=stats, on_committed=lambda n: None)
    await storage.load_counts()
    return storage, stats, conn


def _page_result(n: int, *, ms: float, status: int = 200, size: int = 10) -> PageResult:
    url = f"http://h{n % 3}.test/{n}"
    page = PageRecord(
        url=url,
        final_url=url,
        status=status,
        content_type="text/html",
        encoding="utf-8",
        size_bytes=size,
        depth=0,
        elapsed_ms=ms,
        fetched_at=utc_now(),
        body=None,
    )
    return PageResult(request_id=n + 1, url=url, state=RequestState.DONE, attempts=1, page=page)


def assert_samples_match_the_tables(db: Path, stats: Stats) -> None:
    """The last `stats_ts` row and the `host_stats` rows count exactly what is stored, and
    agree with the run's counters (what `crawls.stats` keeps)."""
    last = rows(db, f"SELECT {SAMPLE_COLUMNS} FROM stats_ts ORDER BY id DESC LIMIT 1")[0]
    counted = rows(
        db,
        "SELECT (SELECT count(*) FROM pages), (SELECT count(*) FROM items), "
        "(SELECT count(*) FROM errors), "
        "(SELECT count(*) FROM requests WHERE state = 'failed'), "
        "(SELECT coalesce(sum(size_bytes), 0) FROM pages)",
    )[0]
    assert last[:5] == counted
    assert counted[:4] == (stats.pages, stats.items, sum(stats.errors.values()), stats.failed)
    by_host = {
        host: (pages, errors, failed, avg)
        for host, pages, errors, failed, avg in rows(
            db, "SELECT host, pages, errors, failed, avg_ms FROM host_stats"
        )
    }
    stored = rows(
        db,
        "SELECT r.host, (SELECT count(*) FROM pages p WHERE p.request_id = r.id), "
        "(SELECT count(*) FROM errors e WHERE e.request_id = r.id), r.state = 'failed', "
        "(SELECT elapsed_ms FROM pages p WHERE p.request_id = r.id) "
        "FROM requests r WHERE r.state != 'pending'",
    )
    for host in {row[0] for row in stored}:
        mine = [row for row in stored if row[0] == host]
        timings = [row[4] for row in mine if row[4] is not None]
        pages, errors, failed, avg = by_host[host]
        assert (pages, errors, failed) == tuple(sum(row[i] for row in mine) for i in (1, 2, 3))
        assert all(math.isfinite(ms) and ms >= 0 for ms in timings)
        if timings:
            assert avg == pytest.approx(sum(timings) / len(timings), rel=1e-6, abs=0.01)
        else:
            assert avg is None


@pytest.mark.parametrize("ms", [math.nan, math.inf, -math.inf, -5.0, 1e308])
async def test_a_timing_that_is_not_a_duration_breaks_neither_the_batch_nor_the_sample(
    db_path: Path, ms: float
) -> None:
    storage, stats, conn = await _sampling_writer(db_path, write_batch_size=8)
    try:
        results = [_page_result(n, ms=12.5) for n in range(30)]
        results[7] = _page_result(7, ms=ms)
        results[8] = _page_result(8, ms=ms)
        await write_all(storage, results)
    finally:
        await conn.close()
    assert scalar(db_path, "SELECT count(*) FROM requests WHERE state = 'done'") == 30
    assert_samples_match_the_tables(db_path, stats)


async def test_samples_do_not_count_a_result_whose_rows_were_refused(db_path: Path) -> None:
    storage, stats, conn = await _sampling_writer(db_path, write_batch_size=8)
    try:
        results = [_page_result(n, ms=3.0) for n in range(30)]
        refused = results[4].page
        assert refused is not None
        refused.encoding = b"utf-8"  # type: ignore[assignment]  # JSON cannot carry it
        await write_all(storage, results)
    finally:
        await conn.close()
    assert rows(
        db_path, "SELECT id - 1, reason LIKE 'internal: %' FROM requests WHERE state = 'failed'"
    ) == [(4, 1)]
    assert_samples_match_the_tables(db_path, stats)


async def test_timings_out_of_range_are_stored_in_range_on_both_backends(
    database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crawl whose clock gives timings that are not durations (NaN, infinities, negative,
    absurdly long) stores every page with a timing in range, and its series goes on."""
    timings = itertools.cycle([math.nan, math.inf, -math.inf, -3.0, 1e308, 7.0])
    original = recrawl.page_record

    def odd_timing(outcome: Fetched, *args: Any) -> PageRecord:
        outcome.elapsed_ms = next(timings)
        return original(outcome, *args)

    monkeypatch.setattr(crawl_module, "page_record", odd_timing)
    async with TestServer(tree_app(30), host="127.0.0.1") as site:
        spider = with_start_urls(FollowAllSpider, [str(site.make_url("/p/0"))])
        stats = await crawl(spider, db=database, settings={**FAST, "stats_interval": 0.01})
    assert (stats["pages"], stats["requests_failed"], stats["errors"]) == (30, 0, {})
    stored = [ms for (ms,) in rows(database, "SELECT elapsed_ms FROM pages")]
    assert len(stored) == 30 and all(0.0 <= ms <= MAX_ELAPSED_MS for ms in stored)
    assert sorted(set(stored) - {7.0}) == [0.0, MAX_ELAPSED_MS]
    assert rows(database, "SELECT count(*) FROM requests WHERE state = 'done'") == [(30,)]
    if not is_postgres(database):  # PostgreSQL keeps no series (README, dashboard)
        last = rows(database, "SELECT pages, errors, failed FROM stats_ts ORDER BY id DESC")
        assert last[0] == (30, 0, 0)
        assert scalar(database, "SELECT avg_ms FROM host_stats") == pytest.approx(
            scalar(database, "SELECT avg(elapsed_ms) FROM pages")
        )


_TIMINGS = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])


@given(
    st.lists(
        st.tuples(
            _TIMINGS,
            st.integers(100, 599) | st.none(),  # None: no response, the request failed
            st.integers(0, 2**53),
            st.booleans(),  # a row the database refuses
        ),
        min_size=1,
        max_size=24,
    ),
    st.integers(1, 8),
)
def test_the_sampling_writer_never_raises_and_its_samples_are_the_tables(
    values: list[tuple[float, int | None, int, bool]], batch: int
) -> None:
    results: list[PageResult] = []
    for n, (ms, status, size, refused) in enumerate(values):
        each = _page_result(n, ms=ms, status=status or 200, size=size)
        if status is None:
            error = result(f"h{n % 3}.test", None, errors=1)
            each.page, each.state, each.errors = None, RequestState.FAILED, error.errors
        elif refused and each.page is not None:
            each.page.encoding = b"?"  # type: ignore[assignment]  # JSON cannot carry it
        results.append(each)

    async def write(db: Path) -> Stats:
        storage, stats, conn = await _sampling_writer(db, write_batch_size=batch)
        try:
            await write_all(storage, results)
        finally:
            await conn.close()
        return stats

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "crawl.db"
        stats = asyncio.run(write(db))
        refusals = sum(s is not None and r for _, s, _, r in values)
        assert scalar(db, "SELECT count(*) FROM requests WHERE reason LIKE 'internal:%'") == (
            refusals
        )
        assert scalar(db, "SELECT count(*) FROM requests WHERE state = 'pending'") == 60 - len(
            values
        )
        assert_samples_match_the_tables(db, stats)
