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
from crawler.links import host_of
from crawler.records import HostRecord
from crawler.settings import Settings

__all__ = ["RECENT_HOSTS", "HostState", "Hosts", "Pacer", "Slot", "Throttle", "ThrottlePolicy"]

logger = logging.getLogger(__name__)

THROTTLE_STATUSES: Final = frozenset({429, 503})
"""Statuses that mean "slow down": the host gets a cool-down and a lower pace."""
RECENT_HOSTS: Final = 4096
"""Hosts kept in memory, the most recently used (more only while they have work)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottlePolicy:
    """The settings a `Throttle` works within."""

    min_delay: float
    """`delay_per_host`: the delay never goes below it (nor below a host's Crawl-delay)."""
    max_delay: float
    """`autothrottle_max_delay`: the delay never goes above it (unless Crawl-delay is larger)."""
    max_concurrency: int
    """`concurrency_per_host`: the hard cap on the concurrency limit."""
    target_concurrency: float
    """`autothrottle_target_concurrency`: delay = latency / target, on average."""
    adaptive: bool
    """`autothrottle`: adapt the delay and the limit; when off, only cool-downs apply."""
    slowed_delay: float
    """The least delay after a 429/503 or a failure (`backoff_base`)."""
    retry_after_max: float
    """The longest cool-down a `Retry-After` can ask for."""
    randomize: bool = False
    """`randomize_delay`: each start waits the delay times a random factor in [0.5, 1.5)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Return the policy the settings describe."""
        return cls(
            min_delay=settings.delay_per_host,
            max_delay=settings.autothrottle_max_delay,
            max_concurrency=settings.concurrency_per_host,
            target_concurrency=settings.autothrottle_target_concurrency,
            adaptive=settings.autothrottle,
            slowed_delay=settings.backoff_base,
            retry_after_max=settings.retry_after_max,
            randomize=settings.randomize_delay,
        )


@final
class Throttle:
    """The pace of one host: its delay, its concurrency limit and its cool-down.

    Like Scrapy's AutoThrottle, each response pulls the delay halfway towards
    `latency / target_concurrency`; only a success (status < 400) may lower it. On top of
    that, additive increase / multiplicative decrease of the concurrency limit: a 429 or 503
    halves the limit, at least doubles the delay and starts a host-wide cool-down (the
    `Retry-After`, else the new delay); a failure without a response (timeout, reset) halves
    the limit only; each success raises the limit by one, up to the cap.

    All methods take the current time as an argument, so the maths can be tested with a fake
    clock. With `adaptive` off, the delay stays at its floor, the limit at the cap, and only
    `Retry-After` cool-downs apply.
    """

    __slots__ = ("blocked_until", "delay", "floor", "limit", "policy")

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self.floor = policy.min_delay
        """The least delay: `delay_per_host`, raised by robots.txt `Crawl-delay`."""
        self.delay = policy.min_delay
        """Seconds between the starts of two requests to this host."""
        self.limit = policy.max_concurrency
        """Requests allowed in flight to this host."""
        self.blocked_until = -math.inf
        """No request may start before this time (a cool-down)."""

    def set_floor(self, seconds: float) -> None:
        """Raise the least delay (a robots.txt `Crawl-delay`); never below `delay_per_host`."""
        self.floor = max(self.policy.min_delay, seconds)
        self.delay = self.clamp(self.delay)

    def on_response(
        self, now: float, latency: float, status: int, retry_after: float | None = None
    ) -> None:
        """Account for one response that took `latency` seconds."""
        policy = self.policy
        if status in THROTTLE_STATUSES:
            if policy.adaptive:
                self._slow_down()
            if retry_after is not None:
                pause = min(retry_after, policy.retry_after_max)
            else:
                pause = self.delay if policy.adaptive else 0.0
            self.blocked_until = max(self.blocked_until, now + pause)
            return
        if not policy.adaptive:
            return
        averaged = (self.delay + latency / policy.target_concurrency) / 2
        if status < 400:
            self.delay = self.clamp(averaged)
            self.limit = min(policy.max_concurrency, self.limit + 1)
        else:  # an error page is no evidence that the host can go faster
            self.delay = self.clamp(max(self.delay, averaged))

    def on_failure(self, now: float) -> None:
        """Account for an attempt that got no response (timeout, refused, reset): fewer in
        flight. The delay stays: a failure says nothing about the host's response time, and
        the fetcher's retry backoff already waits."""
        if self.policy.adaptive:
            self.limit = max(1, self.limit // 2)

    def _slow_down(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.delay = self.clamp(max(2 * self.delay, self.policy.slowed_delay))

    def clamp(self, delay: float) -> float:
        """`delay` within the floor and `max_delay` (or the floor, when that is larger)."""
        return min(max(delay, self.floor), max(self.policy.max_delay, self.floor))


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
        """Waits for a delayed host's crawl-wide turn (workers elsewhere: store.pg_pacing)."""

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
