"""Per-host politeness: how many requests each host may have in flight, how long to wait
between two of them, and how both adapt to the way the host answers.

Two parties share a `HostState`. The feeder *reserves* a host when it hands one of its
requests to a worker and only hands out requests of hosts that are ready (fewer reservations
than the host's limit, its delay passed, no cool-down): that is what keeps a slow host from
occupying the workers. The fetcher takes a *slot* around each attempt: the slot waits for the
host's next start time (so delays hold even when workers race), measures the response time
and feeds status and latency to the host's `Throttle` (the arithmetic alone, without clocks
or I/O). A retry's backoff sleep happens between attempts, outside any slot.

Memory holds the `RECENT_HOSTS` most recently used hosts, more only while they have work
(held, handed out, results being written); `Hosts.trim` forgets idle ones beyond that. What
a host learned goes to the `hosts` table with its results (`Hosts.snapshot`; forgotten only
once committed, `Hosts.saved`) and comes back with a claim that brings it work
(`Hosts.restore`): memory does not grow with the number of hosts, and nothing is lost.
Processes sharing the database learn of each other's pauses of the hosts they hold
(`Hosts.learn`, fed by the writer: crawler.store.batches).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, final

from crawler.errors import ConnectError, FetchTimeout, ProtocolError
from crawler.fetch.throttle import THROTTLE_STATUSES, Throttle, ThrottlePolicy
from crawler.links import host_of
from crawler.records import HostRecord
from crawler.settings import Settings

__all__ = ["RECENT_HOSTS", "HostState", "Hosts", "Pacer", "Slot"]

logger = logging.getLogger(__name__)

RECENT_HOSTS: Final = 4096
"""Hosts kept in memory, the most recently used (more only while they have work)."""
_SAME_TIME: Final = 0.01
"""Seconds within which a stored time is taken for one this process wrote itself (the two
clocks a stored time goes through, `wall` and `clock`, may drift apart a little)."""


@final
@dataclass(slots=True)
class HostState:
    """Everything the feeder and the fetcher know about one host."""

    host: str
    throttle: Throttle
    reserved: int = 0
    """Requests handed to workers and not finished yet (the feeder's count)."""
    released_at: float = -math.inf
    """When the feeder last handed out a request of this host."""
    last_start: float = -math.inf
    """When the last attempt started."""
    next_start: float = -math.inf
    """The earliest time the next attempt may start (set by the fetcher's slots)."""
    active: int = 0
    """Attempts in progress right now."""
    crawl_delay: float | None = None
    """The robots.txt `Crawl-delay` applied, if any."""
    last_status: int | None = None
    """The status of the last response."""
    unsaved: int = 0
    """Snapshots handed to the writer and not committed yet: the host stays in memory."""

    def idle(self) -> bool:
        """Whether nothing of the host is in flight or waiting to be written."""
        return not (self.reserved or self.active or self.unsaved)

    def start_at(self) -> float:
        """The earliest time an attempt may start: the delay and any cool-down passed."""
        return max(self.next_start, self.throttle.blocked_until)

    def ready_at(self) -> float:
        """The earliest time the feeder may hand out another request of this host.

        Without a delay that is now: several requests may go out in the same instant (the
        feeder's clock reading can be older than the last `released_at`).
        """
        delay = self.throttle.delay
        if delay <= 0:
            return self.start_at()
        return max(self.start_at(), self.released_at + delay)


@final
class Slot:
    """One attempt's hold on its host (see `Hosts.slot`), as an async context manager; the
    fetcher reports the response through it."""

    __slots__ = ("_hosts", "_state", "retry_after", "started", "status")

    def __init__(self, hosts: Hosts, state: HostState) -> None:
        self._hosts = hosts
        self._state = state
        self.started = 0.0
        """When the attempt took its turn (on the hosts' clock)."""
        self.status: int | None = None
        self.retry_after: float | None = None

    def responded(self, status: int, retry_after: float | None) -> None:
        """Record the status (and `Retry-After`) of the final response of this attempt."""
        self.status = status
        self.retry_after = retry_after

    async def __aenter__(self) -> Self:
        self.started = await self._hosts._enter(self._state)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._hosts._exit(self._state, self, exc)


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Pacer = Callable[[str, float], Awaitable[None]]  # (host, least delay): its crawl-wide turn


@final
class Hosts:
    """The `HostState` of the `recent` most recently used hosts and of those with work (see
    the module doc), each paced by the settings that apply to its host (`Settings.for_host`:
    recomputed alike when a forgotten host comes back).

    `clock`, `wall`, `sleep` and `rand` are injectable so that tests can run the timing on a
    fake clock; by default they are `time.monotonic`, `time.time` (the `hosts` table's times),
    `asyncio.sleep` and `random.random`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        recent: int | None = None,
    ) -> None:
        self._settings = settings
        self._policy = ThrottlePolicy.from_settings(settings)
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rand = rand
        self._recent = RECENT_HOSTS if recent is None else recent
        self._states: OrderedDict[str, HostState] = OrderedDict()
        """Least recently handed out first (see `trim`)."""
        self._busy: set[str] = set()
        self.pacer: Pacer | None = None
        """Waits for a delayed host's crawl-wide turn (other processes on the database:
        crawler.store.pacing, crawler.store.pg_pacing)."""

    @property
    def clock(self) -> Clock:
        """The clock every time in a `HostState` is measured on."""
        return self._clock

    def __len__(self) -> int:
        """The number of hosts in memory."""
        return len(self._states)

    def __contains__(self, host: object) -> bool:
        """Whether `host` is in memory (else its state is in the `hosts` table, if any)."""
        return host in self._states

    def __getitem__(self, host: str) -> HostState:
        """Return a host's state, creating it on first use."""
        state = self._states.get(host)
        if state is None:
            policy = self._policy
            if (settings := self._settings.for_host(host)) is not self._settings:
                policy = ThrottlePolicy.from_settings(settings)
            state = self._states[host] = HostState(host, Throttle(policy))
        return state

    def set_crawl_delay(self, host: str, seconds: float) -> None:
        """Apply a robots.txt `Crawl-delay` to a host, counted from its last request (the
        robots.txt fetch itself)."""
        state = self[host]
        state.crawl_delay = seconds
        state.throttle.set_floor(seconds)
        state.next_start = max(state.next_start, state.last_start + state.throttle.delay)

    def reserve(self, host: str) -> None:
        """The feeder hands one request of `host` to the workers."""
        state = self[host]
        state.reserved += 1
        state.released_at = self._clock()
        self._busy.add(host)
        self._states.move_to_end(host)

    def finish(self, host: str) -> None:
        """A worker is done with a request of `host` (fetched, failed or skipped)."""
        state = self[host]
        state.reserved = max(0, state.reserved - 1)
        if not state.reserved:
            self._busy.discard(host)

    def reservations(self) -> dict[str, int]:
        """Requests handed to workers and not finished, per host (hosts with none left out)."""
        return {host: self._states[host].reserved for host in self._busy}

    def snapshot(self, host: str) -> HostRecord:
        """What `host` has learned, for the `hosts` table; the host stays in memory until
        `saved` is called for it (once the writer has committed the record)."""
        state = self[host]
        state.unsaved += 1
        throttle = state.throttle
        start = state.start_at()
        return HostRecord(
            host=host,
            crawl_delay=state.crawl_delay,
            throttle_delay=throttle.delay,
            throttle_concurrency=throttle.limit,
            not_before=None if start == -math.inf else self._wall() + start - self._clock(),
            last_status=state.last_status,
        )

    def saved(self, hosts: Iterable[str]) -> None:
        """The writer committed a snapshot of each of `hosts` (one entry per snapshot)."""
        for host in hosts:
            if (state := self._states.get(host)) is not None and state.unsaved:
                state.unsaved -= 1

    def restore(self, record: HostRecord) -> None:
        """Bring back a host that is not in memory as the `hosts` table knows it (a host in
        memory knows at least as much: it is left as it is)."""
        if record.host in self._states:
            return
        state = self[record.host]
        throttle = state.throttle
        if record.crawl_delay is not None:
            state.crawl_delay = record.crawl_delay
            throttle.set_floor(record.crawl_delay)
        if record.throttle_delay is not None:
            throttle.delay = throttle.clamp(record.throttle_delay)
        if (limit := record.throttle_concurrency) is not None:
            throttle.limit = min(max(1, limit), throttle.policy.max_concurrency)
        if record.not_before is not None:
            throttle.blocked_until = self._clock() + record.not_before - self._wall()
        state.last_status = record.last_status

    def learn(self, records: Iterable[HostRecord]) -> None:
        """Take in what other processes sharing the database stored about hosts in memory: a
        pause (`not_before`) later than this process's own next start means another process
        saw the host back off (429/503, autothrottle). Then the host waits for it here too,
        at the slower of the two throttles (delay and limit). A stored pause that is not
        later is this process's own, or one it already knows: the host is left as it is.
        Hosts not in memory are skipped (a claim that gives them work restores them)."""
        now, wall = self._clock(), self._wall()
        for record in records:
            state = self._states.get(record.host)
            if state is None or record.not_before is None:
                continue
            pause = now + record.not_before - wall
            if pause <= state.start_at() + _SAME_TIME:
                continue
            throttle = state.throttle
            throttle.blocked_until = pause
            if record.throttle_delay is not None:
                throttle.delay = throttle.clamp(max(throttle.delay, record.throttle_delay))
            if record.throttle_concurrency is not None:
                throttle.limit = max(1, min(throttle.limit, record.throttle_concurrency))
            logger.debug(
                "%s: paused for %.1fs, as another process stored", record.host, pause - now
            )

    def trim(self, keep: Callable[[str], bool]) -> list[str]:
        """Forget the least recently used idle hosts while more than `recent` are in memory,
        except those `keep` names (the feeder holds requests of them); return the hosts
        forgotten."""
        states = self._states
        forgotten: list[str] = []
        for _ in range(len(states)):
            if len(states) <= self._recent:
                break
            host, state = states.popitem(last=False)
            if state.idle() and not keep(host):
                forgotten.append(host)
            else:
                states[host] = state  # busy: to the back of the line
        return forgotten

    def slot(self, url: str) -> Slot:
        """Hold the host of `url` for one attempt: `async with hosts.slot(url) as slot:`.

        Entering waits until the host's delay and cool-down have passed, then sets the next
        start time; the fetcher reports the response status through the `Slot`. On exit the
        latency and the status (or the failure) adjust the host's throttle.
        """
        return Slot(self, self[host_of(url)])

    async def _enter(self, state: HostState) -> float:
        """Wait for the host's turn, take it, and return the start time."""
        while (wait := state.start_at() - self._clock()) > 0:
            await self._sleep(wait)
        if self.pacer is not None and state.throttle.floor > 0:
            await self.pacer(state.host, state.throttle.floor)
        started = state.last_start = self._clock()
        factor = 0.5 + self._rand() if state.throttle.policy.randomize else 1.0
        state.next_start = started + state.throttle.delay * factor
        state.active += 1
        return started

    def _exit(self, state: HostState, slot: Slot, failure: BaseException | None) -> None:
        """Release the host and feed the attempt's outcome to its throttle."""
        state.active -= 1
        if slot.status is not None:
            state.last_status = slot.status
        if isinstance(failure, FetchTimeout | ConnectError | ProtocolError):
            state.throttle.on_failure(self._clock())  # too large, redirect: not the host's fault
            return
        if failure is not None or slot.status is None:
            return
        now = self._clock()
        state.throttle.on_response(now, now - slot.started, slot.status, slot.retry_after)
        if slot.status in THROTTLE_STATUSES:
            logger.info(
                "%s answered %d: pausing it for %.1fs, then at most %d in flight, %.2fs apart",
                state.host,
                slot.status,
                max(0.0, state.throttle.blocked_until - now),
                state.throttle.limit,
                state.throttle.delay,
            )
