"""Claims on PostgreSQL while nothing is due: a crawl that waits (its hosts in back-off, its
requests not yet due) asks the server a few cheap questions, not a count of the frontier
every 50 ms, and still takes at once the work another process adds meanwhile. And a run
that starts reads how many requests are pending from counters, not the frontier."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.settings import load_settings
from crawler.stats import Stats
from crawler.store.claims import HOSTS_PER_CLAIM, ClaimBatch
from crawler.store.pg_claims import _LEASED_ELSEWHERE, PgClaims
from crawler.store.pg_link import PgLink
from crawler.store.pg_listen import NOTIFY, PgListener
from crawler.store.pg_runs import start_pg_run
from crawler.store.pg_schema import PG_MIGRATIONS, PG_SCHEMA_VERSION, open_pg
from crawler.store.pg_writer import PgStorage
from tests.conftest import ROOT, Target
from tests.databases import rows, scalar
from tests.pgserver import TEST_SETTINGS, PostgresServer, find_bin_dir
from tests.polite_sites import VISITS, Visits, pages_app
from tests.spiders import FollowAllSpider

BACK_OFF: Final = 4
"""Seconds of the 429's Retry-After: the only host waits this long."""
SETTINGS: Final = {
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "progress_interval": 60.0,
    "retry_after_inline": 0.5,  # a longer Retry-After sends the request back to the frontier
    "write_interval": 0.05,
    "obey_robots": False,
}


@dataclass
class ClaimLog:
    """Every claim of the crawls in this process: when it ran and what it returned."""

    claims: list[tuple[float, ClaimBatch]] = field(default_factory=list)

    def empty_between(self, start: float, end: float) -> int:
        """Claims that found nothing between two `time.monotonic()` times."""
        return sum(1 for at, batch in self.claims if start < at < end and not batch.claimed)


@pytest.fixture
def claim_log(monkeypatch: pytest.MonkeyPatch) -> ClaimLog:
    """Record every `PgClaims.claim` (one transaction of claim queries each)."""
    log = ClaimLog()
    original = PgClaims.claim

    async def claim(
        self: PgClaims,
        limit: int,
        held: Mapping[str, int],
        per_host: int,
        known: Callable[[str], bool] | None = None,
    ) -> ClaimBatch:
        batch = await original(self, limit, held, per_host, known)
        log.claims.append((time.monotonic(), batch))
        return batch

    monkeypatch.setattr(PgClaims, "claim", claim)
    return log


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Target:
    """A fresh database on the session's server."""
    return postgres_server.create_database()


def pause_of(visits: Visits) -> tuple[float, float]:
    """When the 429 was answered and when the host was next asked (server-side times)."""
    refused = next(at for at, _, status in visits.answers if status == 429)
    resumed = min(at for at in visits.times() if at > refused)
    return refused, resumed


async def test_a_crawl_waiting_out_a_back_off_asks_a_handful_of_times(
    postgres: Target, claim_log: ClaimLog
) -> None:
    """The only host answers 429 with Retry-After 4 s: the crawl waits, then finishes. While
    it waits it claims about once a second at most (it claimed every 50 ms, each claim
    counting every pending row)."""
    app = pages_app(12, too_many={"/p/3": 1}, retry_after=str(BACK_OFF))
    async with TestServer(app, host="127.0.0.2") as server:
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/"))])
        settings = {**SETTINGS, "concurrency_per_host": 1}
        stats = await crawl(spider, db=postgres, settings=settings)
    refused, resumed = pause_of(app[VISITS])
    assert resumed - refused >= BACK_OFF - 0.1  # the back-off held
    waiting = claim_log.empty_between(refused + 0.2, resumed - 0.2)
    assert waiting <= BACK_OFF + 2, [round(at - refused, 2) for at, _ in claim_log.claims]
    assert stats["pages"] == 13
    assert rows(postgres, "SELECT state, count(*) FROM requests GROUP BY state") == [("done", 13)]
    assert scalar(postgres, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0


async def test_work_another_process_adds_is_taken_while_waiting_out_a_back_off(
    postgres: Target,
) -> None:
    """This crawl's only host (127.0.0.2) answers 429 with Retry-After 6 s. While it waits, a
    second crawler process starts on another host (127.0.0.3, 30 slow pages, one at a time):
    this crawl takes some of that work long before its own host is ready again, and both
    end with every request done and no lease left."""
    own = pages_app(8, too_many={"/p/3": 1}, retry_after="6")
    other = pages_app(30, latency=0.1)
    async with (
        TestServer(own, host="127.0.0.2") as first,
        TestServer(other, host="127.0.0.3") as second,
    ):
        spider = with_start_urls(FollowAllSpider, [str(first.make_url("/"))])
        # Workers of one crawl share a spider (README): the links this crawl finds on the
        # other's site are work, not offsite (woken by the other's first commit, it may
        # fetch that site's start page first).
        spider.allowed_domains = [*spider.allowed_domains, "127.0.0.3"]
        waiting = asyncio.create_task(
            crawl(spider, db=postgres, settings={**SETTINGS, "concurrency_per_host": 4})
        )
        for _ in range(1500):  # 30 s
            if any(status == 429 for _, _, status in own[VISITS].answers):
                break
            await asyncio.sleep(0.02)
        adding = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "crawler", "crawl", "tests.spiders:FollowAllSpider", "-o", str(postgres)),
            *("--start-url", str(second.make_url("/"))),
            *("-s", "concurrency=1", "-s", "queue_window=2", "-s", "concurrency_per_host=4"),
            *("-s", "obey_robots=false", "-s", "write_interval=0.05"),
            *("-s", "progress_interval=60"),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(90):
            _, stderr = await adding.communicate()
            stats = await waiting
    assert adding.returncode == 0, stderr.decode(errors="replace")
    first_run = scalar(postgres, "SELECT min(id) FROM crawls")
    resumed_at = scalar(postgres, "SELECT fetched_at FROM pages WHERE url LIKE '%127.0.0.2%/p/3'")
    taken_before = scalar(
        postgres,
        "SELECT count(*) FROM pages WHERE crawl_id = ? AND url LIKE '%127.0.0.3%' "
        "AND fetched_at < ?",
        (first_run, resumed_at),
    )
    assert taken_before > 0
    own_pages = scalar(postgres, "SELECT count(*) FROM pages WHERE crawl_id = ?", (first_run,))
    assert stats["pages"] == own_pages
    assert rows(postgres, "SELECT state, count(*) FROM requests GROUP BY state") == [("done", 40)]
    assert scalar(postgres, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0


@pytest.fixture(scope="module")
def counting_server() -> Iterator[PostgresServer]:
    """A server of this module's own that counts each statement's buffers (pg_stat_statements
    must be loaded at start-up, which the session's server is not)."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None, "PostgreSQL is not installed"
    server = PostgresServer(
        bin_dir, settings=(*TEST_SETTINGS, "shared_preload_libraries=pg_stat_statements")
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def fill_frontier(conn: asyncpg.Connection, requests: int, hosts: int) -> None:
    """`requests` pending requests spread over `hosts` hosts (h000000.test, …), none leased."""
    await conn.execute(
        "INSERT INTO requests (url, fingerprint, host, depth, state, crawl_id, discovered_at) "
        "SELECT 'http://' || h || '/' || g, g, h, 0, 'pending', 1, '2026-12-07T00:00:00' "
        "FROM generate_series(1, $1) g, LATERAL (SELECT 'h' || lpad((g % $2)::text, 6, '0') "
        "|| '.test' AS h) named",
        requests,
        hosts,
    )
    await conn.execute("ANALYZE requests")


async def buffers_used(conn: asyncpg.Connection) -> int:
    """Buffers the statements on this database touched since the last reset (read or hit)."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(shared_blks_hit + shared_blks_read), 0) FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query NOT LIKE '%pg_stat_statements%'"
        )
    )


def claims_on(conn: asyncpg.Connection, url: str) -> PgClaims:
    return PgClaims(PgLink(url, conn), run_id=1, settings=load_settings().settings)


async def test_a_claim_that_finds_nothing_due_reads_indexes_not_the_frontier(
    counting_server: PostgresServer,
) -> None:
    """100,000 pending requests on 20 hosts, every host in back-off (30 s and more), a few
    requests deferred by 20 s: the claim takes nothing and says when to ask again (the
    deferred ones) in a few hundred buffers, where counting the pending rows read the
    whole table (its ~1,800 pages, as many more with every 100,000 requests)."""
    url = counting_server.create_database()
    conn = await open_pg(url)
    try:
        await conn.execute("CREATE EXTENSION pg_stat_statements")
        await fill_frontier(conn, 100_000, 20)
        now = time.time()
        await conn.execute("UPDATE hosts SET not_before = $1::float8 + 30 + length(host)", now)
        await conn.execute(
            "UPDATE requests SET not_before = $1::float8 + 20 WHERE id % 997 = 0", now
        )
        pages = int(await conn.fetchval("SELECT pg_relation_size('requests') / 8192"))
        claims = claims_on(conn, url)
        await conn.execute("SELECT pg_stat_statements_reset()")
        batch = await claims.claim(100, {}, 20)
        used = await buffers_used(conn)
    finally:
        await conn.close()
    assert batch.claimed == []
    assert batch.pending > 0  # the crawl is not over
    assert batch.next_due is not None and abs(batch.next_due - (now + 20)) < 0.01
    assert batch.leased_elsewhere == 0
    assert used < pages / 5, (used, pages)


async def test_claims_move_on_past_a_window_of_hosts_in_back_off(postgres: Target) -> None:
    """More hosts than one claim looks at, the first `HOSTS_PER_CLAIM` in back-off: the next
    claim looks at the hosts after them and takes the ready one's requests (it looked at the
    same hosts again, and the ready one waited for a host of the first window to be ready)."""
    hosts = HOSTS_PER_CLAIM + 10
    conn = await open_pg(str(postgres))
    try:
        await fill_frontier(conn, 3 * hosts, hosts)
        await conn.execute(
            "UPDATE hosts SET not_before = $1 WHERE host <= $2",
            time.time() + 60,
            f"h{HOSTS_PER_CLAIM - 1:06d}.test",
        )
        claims = claims_on(conn, str(postgres))
        first = await claims.claim(100, {}, 20)
        second = await claims.claim(100, {}, 20)
    finally:
        await conn.close()
    assert first.claimed == []
    taken = sorted({c.request.url.split("/")[2] for c in second.claimed})
    assert taken == [f"h{n:06d}.test" for n in range(HOSTS_PER_CLAIM, hosts)]
    assert first.pending > 0
    assert first.next_due is None  # the hosts it did not look at may be ready: ask again


async def database_at(url: str, version: int) -> asyncpg.Connection:
    """A connection to a crawl database at schema `version` (as an older crawler left it)."""
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE crawler_schema (version bigint NOT NULL)")
    await conn.execute("INSERT INTO crawler_schema (version) VALUES ($1)", version)
    for script in PG_MIGRATIONS[:version]:
        await conn.execute(script)
    return conn


def buffers_of(plan: list[dict[str, Any]]) -> int:
    """Buffers the statement's execution touched (read or hit), from EXPLAIN (BUFFERS) JSON."""
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


async def test_whether_another_run_holds_leases_stops_at_the_first_it_finds(
    postgres: Target,
) -> None:
    """A database of schema 4 (before `requests_lease_owner`) where this run (1) holds
    20,000 leases on 99 hosts and another run (2) one lease on a host after them, upgraded:
    whether another run holds a live lease reads a few buffers, not this run's leases (the
    index of leases by host gave them first, each read from the table: ~500 buffers). The
    answer is right either way: yes, and no once run 2's lease has expired."""
    conn = await database_at(str(postgres), 4)
    try:
        await fill_frontier(conn, 20_000, 100)
        now = time.time()
        await conn.execute(
            "UPDATE requests SET lease_owner = 1, lease_expires = $1 WHERE host < 'h000099.test'",
            now + 300,
        )
        await conn.execute(
            "UPDATE requests SET lease_owner = 2, lease_expires = $1 "
            "WHERE id = (SELECT max(id) FROM requests WHERE host = 'h000099.test')",
            now + 300,
        )
        await conn.execute("VACUUM ANALYZE requests")
    finally:
        await conn.close()
    conn = await open_pg(str(postgres))
    try:
        assert await conn.fetchval("SELECT version FROM crawler_schema") == PG_SCHEMA_VERSION
        explain = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_LEASED_ELSEWHERE}"
        plan = json.loads(await conn.fetchval(explain, 1, now))
        held = await conn.fetchval(_LEASED_ELSEWHERE, 1, now)
        expired = await conn.fetchval(_LEASED_ELSEWHERE, 1, now + 400)
        theirs = await conn.fetchval(_LEASED_ELSEWHERE, 2, now)
    finally:
        await conn.close()
    assert (held, expired, theirs) == (True, False, True)
    assert buffers_of(plan) < 30, json.dumps(plan, indent=1)


async def test_a_run_starts_from_the_pending_count_without_reading_the_frontier(
    counting_server: PostgresServer,
) -> None:
    """A database of schema 5 (before `frontier_pending`) with 100,000 pending requests,
    upgraded; then some are done, some skipped, some deferred, one inserted: a run that
    starts reads the exact pending count in a few buffers (counting the rows read the
    frontier: ~2,500 buffers, as many more with every 100,000 requests), and the next run
    folds the counters of the server processes that are gone into one."""
    url = counting_server.create_database()
    conn = await database_at(url, 5)
    try:
        await fill_frontier(conn, 100_000, 20)
    finally:
        await conn.close()
    conn = await open_pg(url)
    try:
        await conn.execute("CREATE EXTENSION pg_stat_statements")
        await conn.execute("UPDATE requests SET state = 'done' WHERE id <= 1000")
        await conn.execute(
            "UPDATE requests SET state = 'skipped', reason = 'depth' WHERE id > 99990"
        )
        await conn.execute("UPDATE requests SET not_before = 1 WHERE id % 7 = 0")
        await conn.execute(
            "INSERT INTO requests (url, fingerprint, host, depth, state, crawl_id, "
            "discovered_at) VALUES ('http://new.test/', 0, 'new.test', 0, 'pending', 1, '')"
        )
        stats = Stats()
        storage = PgStorage(
            PgLink(url, conn),
            run_id=1,
            settings=load_settings().settings,
            stats=stats,
            on_committed=lambda _: None,
        )
        await conn.execute("SELECT pg_stat_statements_reset()")
        await storage.load_counts()
        used = await buffers_used(conn)
        counted = await conn.fetchval("SELECT count(*) FROM requests WHERE state = 'pending'")
    finally:
        await conn.close()
    assert stats.pending == counted == 100_000 - 1000 - 10 + 1
    assert used < 50, used
    conn = await open_pg(url)
    try:
        await start_pg_run(conn, spider="s", settings={}, fresh=False)
        kept = await conn.fetch("SELECT backend, pending FROM frontier_pending")
    finally:
        await conn.close()
    assert [tuple(row) for row in kept] == [(0, counted)]


async def leases_held(url: str) -> int:
    """Requests under a lease (0 before a crawl made the schema)."""
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('crawler_schema') IS NOT NULL"):
            return 0
        return int(
            await conn.fetchval("SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL")
        )
    except asyncpg.UndefinedTableError:  # the schema is being made
        return 0
    finally:
        await conn.close()


async def test_a_worker_waiting_for_another_is_woken_not_polling(
    postgres: Target, claim_log: ClaimLog
) -> None:
    """A worker process leases all 30 slow pages of a site (0.5 s each, 4 at a time); a
    second crawl of the same site, in this process, finds every pending request leased and
    waits for it: it asks again about once a second (it claimed every 50 ms: ~80 times),
    and ends when the other ends, every request done and no lease left."""
    app = pages_app(30, latency=0.5)
    async with TestServer(app, host="127.0.0.2") as server:
        holding = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "crawler", "crawl", "tests.spiders:FollowAllSpider", "-o", str(postgres)),
            *("--start-url", str(server.make_url("/"))),
            *("-s", "concurrency=4", "-s", "concurrency_per_host=40"),
            *("-s", "obey_robots=false", "-s", "write_interval=0.05"),
            *("-s", "progress_interval=60"),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(1500):  # 30 s
            if await leases_held(str(postgres)) >= 25:
                break
            await asyncio.sleep(0.02)
        spider = with_start_urls(FollowAllSpider, [str(server.make_url("/"))])
        started = time.monotonic()
        async with asyncio.timeout(90):
            stats = await crawl(spider, db=postgres, settings=SETTINGS)
            ended = time.monotonic()
            _, stderr = await holding.communicate()
    assert holding.returncode == 0, stderr.decode(errors="replace")
    waiting = claim_log.empty_between(started + 0.5, ended - 0.5)
    assert ended - started > 2  # it did wait for the other
    assert waiting <= (ended - started) + 5, [round(at - started, 2) for at, _ in claim_log.claims]
    assert stats["pages"] == scalar(postgres, "SELECT count(*) FROM pages WHERE crawl_id = 2")
    assert rows(postgres, "SELECT state, count(*) FROM requests GROUP BY state") == [("done", 31)]
    assert scalar(postgres, "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL") == 0


async def notify(url: str) -> None:
    """Announce a commit on the crawl's channel, as a writer does."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(NOTIFY)
    finally:
        await conn.close()


async def test_the_listener_hears_commits_again_after_a_server_restart(
    postgres_server: PostgresServer,
) -> None:
    """A run's listener wakes the feeder on each notice; when the server restarts it wakes
    it (to poll quickly meanwhile), reconnects, and hears the next notice."""
    url = postgres_server.create_database()
    woken = asyncio.Event()
    listening = asyncio.Event()  # set on each wake that finds the listener connected

    def wake() -> None:
        woken.set()
        if listener.listening():
            listening.set()

    listener = PgListener(url, wake)
    listener.start()
    try:
        async with asyncio.timeout(60):
            await listening.wait()
            woken.clear()
            await notify(url)
            await woken.wait()
            listening.clear()
            await asyncio.to_thread(postgres_server.restart)
            await listening.wait()  # woken by the loss, then by listening again
            woken.clear()
            await notify(url)
            await woken.wait()
    finally:
        await listener.close()
    assert not listener.listening()
