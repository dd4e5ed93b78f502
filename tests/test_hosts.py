"""Per-host politeness in isolation: the throttle's arithmetic on a fake clock, host slots,
the per-host ready queues, and the host-fair claim from the SQLite frontier."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crawler import Request, Spider
from crawler.errors import FetchTimeout
from crawler.fetch.politeness import Hosts
from crawler.fetch.throttle import Throttle, ThrottlePolicy
from crawler.frontier.gate import Frontier
from crawler.frontier.queues import HostQueues
from crawler.links import host_of
from crawler.records import Claimed, HostRecord
from crawler.settings import Settings, load_settings
from crawler.stats import Stats
from crawler.store import claims as claims_module
from crawler.store.claims import _PENDING_SUMMARY, RENEW_LEASES, Claims
from crawler.store.runs import RELEASE_LEASES, start_run
from crawler.store.schema import open_database
from crawler.store.writer import Seeds, Storage
from tests.databases import rows


def policy(**changes: object) -> ThrottlePolicy:
    values: dict[str, object] = {
        "min_delay": 0.0,
        "max_delay": 60.0,
        "max_concurrency": 8,
        "target_concurrency": 1.0,
        "adaptive": True,
        "slowed_delay": 0.5,
        "retry_after_max": 600.0,
    }
    values.update(changes)
    return ThrottlePolicy(**values)  # type: ignore[arg-type]


def test_delay_moves_halfway_to_latency_over_target_concurrency() -> None:
    throttle = Throttle(policy(target_concurrency=2.0))
    throttle.on_response(now=0.0, latency=0.4, status=200)
    assert throttle.delay == pytest.approx(0.1)  # (0 + 0.4 / 2) / 2
    throttle.on_response(now=1.0, latency=0.4, status=200)
    assert throttle.delay == pytest.approx(0.15)
    for step in range(30):
        throttle.on_response(now=2.0 + step, latency=0.4, status=200)
    assert throttle.delay == pytest.approx(0.2)


def test_delay_stays_between_the_floor_and_the_maximum() -> None:
    throttle = Throttle(policy(min_delay=0.3, max_delay=1.0))
    throttle.on_response(now=0.0, latency=0.0, status=200)
    assert throttle.delay == 0.3
    for step in range(10):
        throttle.on_response(now=float(step), latency=50.0, status=200)
    assert throttle.delay == 1.0


def test_server_errors_and_refusals_never_lower_the_delay() -> None:
    throttle = Throttle(policy())
    throttle.on_response(now=0.0, latency=2.0, status=200)
    slow = throttle.delay
    for status in (500, 502, 403, 401, 400):
        throttle.on_response(now=1.0, latency=0.0, status=status)
    assert throttle.delay == slow
    throttle.on_response(now=3.0, latency=0.0, status=200)
    assert throttle.delay < slow


@pytest.mark.parametrize("status", [404, 410])
def test_a_host_answering_not_found_keeps_the_pace_of_its_answers(status: int) -> None:
    # A list of stale URLs: one slow answer among fast ones. Counted as an error page, it
    # set the host's delay for good (~0.25 s: 4 requests a second to a host answering in
    # a millisecond), since only a success could lower it again.
    throttle = Throttle(policy())
    throttle.on_response(now=0.0, latency=0.001, status=status)
    throttle.on_response(now=1.0, latency=0.5, status=status)
    assert throttle.delay > 0.2
    for step in range(20):
        throttle.on_response(now=2.0 + step, latency=0.001, status=status)
    assert throttle.delay == pytest.approx(0.001, abs=0.001)
    assert throttle.limit == 8


def test_429_halves_concurrency_slows_down_and_pauses_for_retry_after() -> None:
    throttle = Throttle(policy())
    throttle.on_response(now=10.0, latency=0.1, status=429, retry_after=5.0)
    assert throttle.limit == 4
    assert throttle.delay == 0.5  # at least slowed_delay
    assert throttle.blocked_until == 15.0
    throttle.on_response(now=11.0, latency=0.1, status=503)  # no Retry-After: pause one delay
    assert throttle.limit == 2
    assert throttle.delay == 1.0  # doubled
    assert throttle.blocked_until == 15.0  # an earlier, longer pause is kept


def test_retry_after_is_capped() -> None:
    throttle = Throttle(policy(retry_after_max=30.0))
    throttle.on_response(now=0.0, latency=0.1, status=429, retry_after=86400.0)
    assert throttle.blocked_until == 30.0


def test_successes_speed_a_throttled_host_back_up() -> None:
    throttle = Throttle(policy())
    for now in (0.0, 1.0, 2.0):
        throttle.on_response(now=now, latency=0.05, status=429)
    assert throttle.limit == 1
    slowed = throttle.delay
    limits, delays = [], []
    for step in range(10):
        throttle.on_response(now=10.0 + step, latency=0.05, status=200)
        limits.append(throttle.limit)
        delays.append(throttle.delay)
    assert limits == [2, 3, 4, 5, 6, 7, 8, 8, 8, 8]
    assert delays == sorted(delays, reverse=True)
    assert delays[-1] == pytest.approx(0.05, abs=0.005)  # back to latency / target
    assert slowed > 1.0


def test_failures_without_a_response_lower_the_concurrency_only() -> None:
    throttle = Throttle(policy())
    throttle.on_response(now=0.0, latency=0.2, status=200)
    throttle.on_failure(now=5.0)
    throttle.on_failure(now=6.0)
    assert (throttle.limit, throttle.delay) == (2, 0.1)
    assert throttle.blocked_until < 5.0


def test_without_autothrottle_only_retry_after_applies() -> None:
    throttle = Throttle(policy(adaptive=False, min_delay=0.2))
    throttle.on_response(now=0.0, latency=3.0, status=200)
    throttle.on_response(now=1.0, latency=3.0, status=503)
    throttle.on_failure(now=2.0)
    assert (throttle.limit, throttle.delay) == (8, 0.2)
    assert throttle.blocked_until == 1.0  # no Retry-After, no pause
    throttle.on_response(now=3.0, latency=0.1, status=429, retry_after=2.0)
    assert throttle.blocked_until == 5.0


def test_crawl_delay_raises_the_floor_but_never_below_delay_per_host() -> None:
    throttle = Throttle(policy(min_delay=1.0))
    throttle.set_floor(5.0)
    assert throttle.delay == 5.0
    throttle.on_response(now=0.0, latency=0.01, status=200)
    assert throttle.delay == 5.0
    throttle.set_floor(0.1)
    assert throttle.floor == 1.0


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def settings(**overrides: object) -> Settings:
    return load_settings(overrides=overrides).settings


async def test_slots_keep_the_delay_between_attempt_starts() -> None:
    clock = FakeClock()
    hosts = Hosts(settings(delay_per_host=2.0, autothrottle=False), clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(3):
        async with hosts.slot("http://a.test/x") as slot:
            starts.append(clock.now)
            clock.now += 0.5  # the response takes half a second
            slot.responded(200, None)
    assert starts == [100.0, 102.0, 104.0]
    assert clock.sleeps == [1.5, 1.5]
    async with hosts.slot("http://b.test/") as slot:  # another host does not wait
        slot.responded(200, None)
    assert clock.sleeps == [1.5, 1.5]


async def test_randomized_delay_uses_half_to_one_and_a_half_times_the_delay() -> None:
    clock = FakeClock()
    hosts = Hosts(
        settings(delay_per_host=2.0, autothrottle=False, randomize_delay=True),
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 0.0,
    )
    for _ in range(2):
        async with hosts.slot("http://a.test/x") as slot:
            slot.responded(200, None)
    assert clock.sleeps == [1.0]


async def test_a_slot_feeds_status_latency_and_failures_to_the_throttle() -> None:
    clock = FakeClock()
    hosts = Hosts(settings(), clock=clock, sleep=clock.sleep)
    async with hosts.slot("http://a.test/") as slot:
        clock.now += 0.2
        slot.responded(429, 3.0)
    state = hosts["a.test"]
    assert state.throttle.limit == 4
    assert state.start_at() == pytest.approx(100.2 + 3.0)
    with pytest.raises(FetchTimeout):
        async with hosts.slot("http://a.test/"):
            raise FetchTimeout("http://a.test/", "read timed out")
    assert clock.sleeps == [pytest.approx(3.0)]  # the second attempt waited out the pause
    assert state.throttle.limit == 2  # halved again by the failure
    assert state.active == 0


class Verdicts:
    """Robots answers for the queue tests: by path prefix, None for unknown hosts."""

    def __init__(self, disallowed: tuple[str, ...] = (), unknown: tuple[str, ...] = ()) -> None:
        self.disallowed = disallowed
        self.unknown = unknown

    def allows(self, url: str) -> bool | None:
        if host_of(url) in self.unknown:
            return None
        return not any(part in url for part in self.disallowed)


def claimed(url: str, number: int) -> Claimed:
    return Claimed(id=number, request=Request(url), attempts=0)


def test_hosts_take_turns() -> None:
    hosts = Hosts(settings(autothrottle=False), clock=lambda: 0.0)
    queues = HostQueues(hosts, Verdicts())
    for number, url in enumerate(
        [
            "http://a.test/1",
            "http://a.test/2",
            "http://a.test/3",
            "http://b.test/1",
            "http://c.test/1",
        ]
    ):
        queues.add(claimed(url, number))
    order = []
    while (item := queues.pop_ready(now=0.0)) is not None:
        order.append(item.request.url)
    assert order == [
        "http://a.test/1",
        "http://b.test/1",
        "http://c.test/1",
        "http://a.test/2",
        "http://a.test/3",
    ]
    assert hosts.reservations() == {"a.test": 3, "b.test": 1, "c.test": 1}


def test_a_host_at_its_limit_waits_until_a_request_finishes() -> None:
    hosts = Hosts(settings(autothrottle=False, concurrency_per_host=2), clock=lambda: 0.0)
    queues = HostQueues(hosts, Verdicts())
    for number in range(4):
        queues.add(claimed(f"http://a.test/{number}", number))
    assert queues.pop_ready(0.0) is not None
    assert queues.pop_ready(0.0) is not None
    assert queues.pop_ready(0.0) is None
    hosts.finish("a.test")
    queues.unblock("a.test")
    third = queues.pop_ready(0.0)
    assert third is not None and third.request.url == "http://a.test/2"
    assert len(queues) == 1


def test_without_a_delay_a_host_takes_its_whole_limit_in_one_instant() -> None:
    ticks = iter(range(1, 1_000_000))  # a clock that moves on every reading, as a real one
    hosts = Hosts(settings(autothrottle=False, concurrency_per_host=4), clock=lambda: next(ticks))
    queues = HostQueues(hosts, Verdicts())
    for number in range(6):
        queues.add(claimed(f"http://a.test/{number}", number))
    now = hosts.clock()  # read once, before the reservations: older than each `released_at`
    handed_out = [queues.pop_ready(now) for _ in range(5)]
    assert [c is not None for c in handed_out] == [True, True, True, True, False]
    assert queues.next_ready_at() is None  # at its limit (blocked), not waiting for a time


def test_a_host_in_its_delay_waits_while_others_go_ahead() -> None:
    hosts = Hosts(settings(autothrottle=False, delay_per_host=1.0))
    queues = HostQueues(hosts, Verdicts())
    queues.add(claimed("http://a.test/1", 1))
    queues.add(claimed("http://a.test/2", 2))
    queues.add(claimed("http://b.test/1", 3))
    now = hosts.clock()
    assert [queues.pop_ready(now), queues.pop_ready(now)] != [None, None]
    assert queues.pop_ready(now) is None
    ready_at = queues.next_ready_at()
    assert ready_at is not None and ready_at == pytest.approx(now + 1.0, abs=0.05)
    later = queues.pop_ready(ready_at)
    assert later is not None and later.request.url == "http://a.test/2"


def test_unknown_robots_allows_one_request_and_disallowed_ones_are_set_aside() -> None:
    hosts = Hosts(settings(autothrottle=False), clock=lambda: 0.0)
    robots = Verdicts(disallowed=("/private",), unknown=("a.test",))
    queues = HostQueues(hosts, robots)
    queues.add(claimed("http://b.test/private/1", 1))
    for number in range(3):
        queues.add(claimed(f"http://a.test/private/{number}", 10 + number))
    queues.add(claimed("http://a.test/open", 20))
    first = queues.pop_ready(0.0)
    assert first is not None and first.id == 10  # fetches robots.txt for a.test
    assert queues.pop_ready(0.0) is None
    assert [c.id for c in queues.take_refused()] == [1]
    robots.unknown = ()  # a.test's robots.txt arrived
    hosts.finish("a.test")
    queues.unblock("a.test")
    last = queues.pop_ready(0.0)
    assert last is not None and last.id == 20
    assert [c.id for c in queues.take_refused()] == [11, 12]
    assert len(queues) == 0


class SeedSpider(Spider):
    name = "seed"

    async def parse(self, response: object) -> AsyncIterator[Request]:
        nothing: tuple[str, ...] = ()
        for url in nothing:
            yield Request(url)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    conn = await open_database(tmp_path / "crawl.db")
    config = settings()
    run_id = await start_run(conn, spider="seed", settings={}, fresh=False)
    store = Storage(
        conn, run_id=run_id, settings=config, stats=Stats(), on_committed=lambda n: None
    )
    frontier = Frontier(config, SeedSpider(), [])
    seeds = Seeds()
    urls = [f"http://a.test/{n}" for n in range(50)] + [f"http://b.test/{n}" for n in range(3)]
    urls += [f"http://c.test/{n}" for n in range(2)]
    for url in urls:
        frontier.admit(
            Request(url), parent_id=None, candidates=seeds.candidates, skipped=seeds.skipped
        )
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(store.run_writer())
            await store.submit_and_wait(seeds)
            yield store
            await store.stop_writer()
    finally:
        await conn.close()


async def test_claims_let_hosts_take_turns_with_a_cap_per_host(storage: Storage) -> None:
    batch = await storage.claim(20, held={"a.test": 2}, per_host=6)
    by_host: dict[str, list[str]] = {}
    for item in batch.claimed:
        by_host.setdefault(host_of(item.request.url), []).append(item.request.url)
    assert by_host == {
        "a.test": [f"http://a.test/{n}" for n in range(4)],  # 6 minus the 2 it holds
        "b.test": [f"http://b.test/{n}" for n in range(3)],
        "c.test": [f"http://c.test/{n}" for n in range(2)],
    }
    held = {"a.test": 6, "b.test": 3, "c.test": 2}
    capped = await storage.claim(20, held=held, per_host=6)
    assert (capped.claimed, capped.capped) == ([], True)  # more is pending, held back
    more = await storage.claim(20, held={"a.test": 0}, per_host=6)
    assert [item.request.url for item in more.claimed] == [
        f"http://a.test/{n}" for n in range(4, 10)
    ]


async def test_a_claim_that_finds_only_other_runs_leases_says_so(
    storage: Storage, tmp_path: Path
) -> None:
    other_run, now = 999, time.time()
    with contextlib.closing(sqlite3.connect(tmp_path / "crawl.db")) as other:
        with other:
            other.execute(
                "UPDATE requests SET lease_owner = ?, lease_expires = ? WHERE state = 'pending'",
                (other_run, now + 60),
            )
        batch = await storage.claim(20)
        assert (batch.claimed, batch.pending, batch.leased_elsewhere) == ([], 1, 1)
        with other:  # a lease that ran out is nobody's: those requests are claimed again
            other.execute("UPDATE requests SET lease_expires = ? WHERE host = 'c.test'", (now - 1,))
    again = await storage.claim(20)
    assert [item.request.url for item in again.claimed] == ["http://c.test/0", "http://c.test/1"]
    assert (await storage.claim(20)).leased_elsewhere == 1


def stored(host: str, not_before: float, delay: float, limit: int) -> HostRecord:
    return HostRecord(
        host=host,
        crawl_delay=None,
        throttle_delay=delay,
        throttle_concurrency=limit,
        not_before=not_before,
        last_status=503,
    )


def test_hosts_learn_a_later_stored_pause_with_the_slower_throttle() -> None:
    hosts = Hosts(settings(), clock=lambda: 100.0, wall=lambda: 5000.0)
    state = hosts["a.test"]
    state.throttle.delay, state.throttle.limit = 0.2, 6
    state.next_start = 100.5  # its own next start: 5000.5 on the wall clock
    hosts.learn([stored("a.test", 5000.4, 1.0, 2)])  # no later than what it knows: its own
    assert (state.start_at(), state.throttle.delay, state.throttle.limit) == (100.5, 0.2, 6)
    hosts.learn([stored("a.test", 5003.0, 1.0, 2), stored("b.test", 5009.0, 1.0, 1)])
    assert state.start_at() == pytest.approx(103.0)  # paused as the other process stored
    assert (state.throttle.delay, state.throttle.limit) == (1.0, 2)
    assert "b.test" not in hosts  # not in memory: a claim restores it with its row
    hosts.learn([stored("a.test", 5004.0, 0.1, 8)])  # a later pause, a faster throttle
    assert state.start_at() == pytest.approx(104.0)
    assert (state.throttle.delay, state.throttle.limit) == (1.0, 2)  # the slower stays


async def test_a_claim_skips_a_host_paused_in_the_table_unless_it_holds_its_requests(
    storage: Storage, tmp_path: Path
) -> None:
    now = time.time()
    with contextlib.closing(sqlite3.connect(tmp_path / "crawl.db")) as other, other:
        # another process sharing the file paused b.test; c.test's pause is over
        other.execute("UPDATE hosts SET not_before = ? WHERE host = 'b.test'", (now + 30,))
        other.execute("UPDATE hosts SET not_before = ? WHERE host = 'c.test'", (now - 1,))
    batch = await storage.claim(60)
    assert {host_of(item.request.url) for item in batch.claimed} == {"a.test", "c.test"}
    empty = await storage.claim(60)
    assert (empty.claimed, empty.pending) == ([], 1)  # 52 of 55 leased to this run
    assert empty.next_due == pytest.approx(now + 30, abs=0.01)  # when a claim is worth making again
    held = await storage.claim(60, held={"b.test": 1}, per_host=10)  # paced by this process
    assert [item.request.url for item in held.claimed] == [f"http://b.test/{n}" for n in range(3)]


async def test_an_idle_claim_says_when_a_claim_is_next_worth_making(
    storage: Storage, tmp_path: Path
) -> None:
    now = time.time()
    with contextlib.closing(sqlite3.connect(tmp_path / "crawl.db")) as other, other:
        other.execute("UPDATE hosts SET not_before = ? WHERE host = 'b.test'", (now + 30,))
        # its own delay is over, but its host is paused: it falls due with the host
        other.execute(
            "UPDATE requests SET not_before = ? WHERE url = 'http://b.test/0'", (now - 5,)
        )
        other.execute(
            "UPDATE requests SET not_before = ? WHERE url = 'http://b.test/1'", (now + 60,)
        )
    await storage.claim(60)  # a.test's and c.test's
    empty = await storage.claim(60)
    assert (empty.claimed, empty.pending) == ([], 1)
    assert empty.next_due == pytest.approx(now + 30, abs=0.01)  # not the past `not_before`


async def test_stored_pauses_are_read_only_after_another_process_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await open_database(tmp_path / "crawl.db")
    try:
        run_id = await start_run(conn, spider="seed", settings={}, fresh=False)
        now = time.time()
        await conn.executemany(
            "INSERT INTO hosts (host, admitted, throttle_delay, throttle_concurrency, not_before) "
            "VALUES (?, 0, 0.5, 4, ?)",
            [("a.test", now + 30), ("b.test", now - 1), ("c.test", now + 30)],
        )
        await conn.commit()
        claims = Claims(conn, run_id=run_id, settings=settings())
        asked: list[int] = []

        def held() -> list[str]:
            asked.append(1)
            return ["a.test", "b.test"]  # c.test is paused, but not held

        first = await claims.stored_pauses(held)
        assert [(r.host, r.throttle_delay, r.throttle_concurrency) for r in first] == [
            ("a.test", 0.5, 4)
        ]
        assert first[0].not_before == pytest.approx(now + 30, abs=0.01)
        assert await claims.stored_pauses(held) == []  # not again within PAUSES_EVERY
        monkeypatch.setattr(claims_module, "PAUSES_EVERY", 0.0)
        assert await claims.stored_pauses(held) == []  # nobody else wrote: nothing is read
        assert len(asked) == 1
        with contextlib.closing(sqlite3.connect(tmp_path / "crawl.db")) as other, other:
            other.execute("UPDATE hosts SET not_before = ? WHERE host = 'b.test'", (now + 9,))
        again = await claims.stored_pauses(held)
        assert sorted(r.host for r in again) == ["a.test", "b.test"]
    finally:
        await conn.close()


async def test_idle_claims_and_leases_read_indexes_of_the_rows_concerned_not_the_frontier(
    tmp_path: Path,
) -> None:
    # A claim that finds nothing, the lease renewal and the release of a run's leases each
    # read every pending row before schema version 10: seconds a time at 1,000,000 pending.
    db = tmp_path / "plans.db"
    await (await open_database(db)).close()
    now = time.time()
    statements = {
        "summary": (_PENDING_SUMMARY, (now, 1)),
        "renewal": (RENEW_LEASES, (now, 1)),
        "release": (RELEASE_LEASES, (1,)),
    }
    plans = {
        name: " ".join(str(row[3]) for row in rows(db, f"EXPLAIN QUERY PLAN {sql}", params))
        for name, (sql, params) in statements.items()
    }
    assert "requests_due" in plans["summary"], plans
    assert "requests_leased" in plans["summary"], plans
    assert "USING INDEX requests_leased" in plans["renewal"], plans
    assert "USING INDEX requests_leased" in plans["release"], plans
    # the summary's EXISTS stops at the frontier's first pending row
    assert "requests_frontier" not in plans["renewal"] + plans["release"], plans
