"""The feeder task: claims pending requests from the SQLite frontier and hands the workers
only requests whose host is ready, hosts taking turns.

Claimed requests are leased to this run in `requests` (so another process does not take
them, and none is lost if this one dies) and wait in memory in `HostQueues`: at most
`queue_window` in all, and a bounded share per host, so one slow host cannot fill the window.
The work queue only ever receives requests whose host had room and whose delay had passed,
and never more than the workers can start (plus a little slack): workers do not sit waiting
for one host while another has work. Requests that robots.txt disallows are recorded as
skipped here, without a worker.

Each claim also brings back the hosts it gives work to that are not in memory (their stored
politeness state and robots.txt answers), before their requests are held; after it, hosts
beyond the bounded cache of recent ones are forgotten (crawler.fetch.politeness), and so are
their robots.txt answers, idle connections and cookies (`on_forget`; `on_restore` brings
the cookies back).

The feeder also decides when the crawl is over: nothing claimed is unfinished and the
frontier holds no pending request. Then, or when asked to stop, it puts one `None` per worker
on the queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Final, final

from crawler.fetch.politeness import Hosts
from crawler.fetch.robots import RobotsCache
from crawler.frontier.queues import HostQueues
from crawler.host_rules import largest
from crawler.links import host_of
from crawler.records import Claimed, HostRecord
from crawler.settings import Settings
from crawler.store.claims import ClaimBatch
from crawler.store.writer import BatchWriter

__all__ = ["Feeder"]

_IDLE_POLL: Final = 1.0
_SHARED_POLL: Final = 0.05
"""Seconds between claims while other processes sharing the file hold every pending request:
the pages they fetch bring new work (early in a crawl) or end it (at the end) at any moment."""
_NOTIFIED_POLL: Final = 1.0
"""`_SHARED_POLL` when their commits wake this feeder (`notified`): what no commit announces
(a lease that expires) is still found."""
_MIN_WAIT: Final = 0.001


@final
class Feeder:
    """Claims pending requests, hands out those whose host is ready, detects the end."""

    def __init__(
        self,
        queue: asyncio.Queue[Claimed | None],
        *,
        settings: Settings,
        hosts: Hosts,
        robots: RobotsCache,
    ) -> None:
        self._queue = queue
        self._window = settings.queue_window
        self._workers = settings.concurrency
        self._most_handed_out = self._workers + max(1, self._workers // 4)
        self._commit_chunk = max(1, self._workers // 2)
        # Requests held or in flight per host: enough to keep the host busy between claims
        # (a claim waits for the writer's commit: tens of milliseconds, in which a fast host
        # answers hundreds of requests), few enough that other processes sharing the file
        # get their share. Depth-first order holds nothing extra, so that each claim takes
        # the newest requests.
        # the busiest host's cap when per-site settings raise it for some hosts
        per_host = largest(
            settings.host_rules, "concurrency_per_host", settings.concurrency_per_host
        )
        in_flight = min(settings.concurrency, per_host)
        self._per_host = in_flight if settings.order == "dfs" else 8 * in_flight + 4
        self._hosts = hosts
        self._robots = robots
        self.on_forget: Callable[[list[str]], None] | None = None
        """Told the hosts forgotten after a claim (the fetcher closes their idle connections
        and drops their cookies)."""
        self.on_restore: Callable[[list[HostRecord]], None] | None = None
        """Told the stored state of the hosts a claim brings back (the fetcher's cookies)."""
        self.notified: Callable[[], bool] | None = None
        """Whether other processes' commits that add work or free leases wake this feeder
        now (`wake`): then it polls slowly while they hold every pending request."""
        self._held = HostQueues(hosts, robots)
        self._handed_out = 0
        self._outstanding = 0
        self._changed = asyncio.Event()
        self._stopping = False
        self._frontier_changed = True
        self._last_empty_claim = -math.inf
        self._poll = _IDLE_POLL
        """Seconds after a claim that found nothing before the next one is worth a query."""
        self._hurried = False
        self._refill_below = self._window
        """Held requests below which a claim is worth a query while workers are busy."""
        self._capped_at: int | None = None
        """Held requests when a claim found every pending host at its cap; no new claim is
        worth a query until half of those are done."""
        self._due_at: float | None = None

    def hold(self) -> None:
        """Count one unit of work that may still add requests (e.g. seeding) as unfinished."""
        self._outstanding += 1

    def release(self, count: int = 1) -> None:
        """Mark `count` held or claimed requests as committed; called by the storage writer."""
        self._outstanding -= count
        self._hurried = False
        self._frontier_changed = True
        self._changed.set()

    def wake(self) -> None:
        """Tell the feeder the frontier may have changed."""
        self._frontier_changed = True
        self._changed.set()

    def done(self, claimed: Claimed) -> None:
        """A worker finished with a request it took from the queue: its host has room again."""
        host = host_of(claimed.request.url)
        self._hosts.finish(host)
        self._held.unblock(host)
        self._handed_out -= 1
        if not self._stopping:
            self._hand_out()  # at once: the feeder task may be waiting for a claim
        self._changed.set()

    def hosts_with_work(self) -> set[str]:
        """The hosts of the requests held or handed out (their pauses matter now)."""
        return self._held.hosts_with_work()

    def stop(self) -> None:
        """Stop handing out work; workers finish what they hold and exit."""
        self._stopping = True
        self._changed.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping

    async def run(self, storage: BatchWriter) -> None:
        """Feed the queue until the crawl is finished or stopped, then stop the workers."""
        try:
            await self._feed(storage)
        finally:
            never_started = len(self._held.drain())
            while not self._queue.empty():
                if self._queue.get_nowait() is not None:
                    never_started += 1
            self._outstanding -= never_started  # their leases are released at close
            for _ in range(self._workers):
                self._queue.put_nowait(None)

    async def _feed(self, storage: BatchWriter) -> None:
        while not self._stopping:
            self._changed.clear()
            await self._skip_disallowed(storage)
            self._hand_out()
            idle = self._handed_out < self._most_handed_out and not len(self._held)
            if idle and not self._hurried and self._outstanding > self._handed_out:
                storage.hurry()  # finished pages wait in the writer: their links are the work
                self._hurried = True
            if self._should_claim():
                self._frontier_changed = False
                self._due_at = None  # this claim says anew what falls due
                room = self._window - len(self._held) - self._handed_out
                batch = await storage.claim(
                    room,
                    held=self._held.held_by_host(),
                    per_host=self._per_host,
                    known=self._hosts.__contains__,
                )
                if self.stopping:  # stop() was called while the claim was running
                    return
                self._take(batch)
                self._capped_at = len(self._held) if batch.capped and not batch.claimed else None
                if batch.claimed:
                    self._refill_below = len(self._held) // 2
                    # With more due requests left, the next refill need not wait for a
                    # commit (that wait starved the workers on a fast host).
                    self._frontier_changed = batch.more
                    continue
                if self._outstanding <= 0 and batch.pending == 0 and not batch.capped:
                    return
                self._last_empty_claim = self._hosts.clock()
                self._poll = self._shared_poll() if batch.leased_elsewhere else _IDLE_POLL
                # Even when it passed during the claim: a host's pause that ended then (a
                # process woken by nothing else would otherwise sleep its whole idle poll).
                self._due_at = batch.next_due
            try:
                async with asyncio.timeout(self._wait_time()):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _shared_poll(self) -> float:
        notified = self.notified is not None and self.notified()
        return _NOTIFIED_POLL if notified else _SHARED_POLL

    def _take(self, batch: ClaimBatch) -> None:
        """Hold a claim's requests, their hosts restored first; then forget the hosts that
        are idle and beyond the cache of recent ones."""
        for host in batch.hosts:
            self._hosts.restore(host)
        if batch.hosts and self.on_restore is not None:
            self.on_restore(batch.hosts)
        for robots in batch.robots:
            self._robots.restore(robots)
        self._outstanding += len(batch.claimed)
        for claimed in batch.claimed:
            self._held.add(claimed)
        forgotten = self._hosts.trim(self._held.holds)
        if forgotten:
            self._robots.forget(forgotten)
            if self.on_forget is not None:
                self.on_forget(forgotten)

    def _hand_out(self) -> None:
        """Put requests of ready hosts on the work queue while workers can take them."""
        now = self._hosts.clock()
        while self._handed_out < self._most_handed_out:
            claimed = self._held.pop_ready(now)
            if claimed is None:
                return
            self._queue.put_nowait(claimed)
            self._handed_out += 1

    async def _skip_disallowed(self, storage: BatchWriter) -> None:
        """Record the held requests that robots.txt disallows (skipped, or deferred while
        their site's robots.txt is unavailable)."""
        for claimed in self._held.take_refused():
            await storage.submit(self._robots.refused(claimed))

    def _should_claim(self) -> bool:
        """Claim when there is room and more requests could help: the held ones run low or
        none of them can be handed out. After a claim that found nothing, wait for the
        frontier to change, a deferred request to fall due, or the idle poll."""
        room = self._window - len(self._held) - self._handed_out
        if room <= 0:
            return False
        if self._capped_at is not None and len(self._held) > self._capped_at // 2:
            return False  # the hosts we hold requests for are still at their cap
        # Finished pages the writer has not committed yet: a claim commits them first, and
        # their links are likely the next work.
        uncommitted = self._outstanding - len(self._held) - self._handed_out
        worth_asking = (
            self._frontier_changed
            or uncommitted >= self._commit_chunk
            or self._hosts.clock() - self._last_empty_claim >= self._poll
            or (self._due_at is not None and time.time() >= self._due_at)
        )
        starving = self._handed_out < self._most_handed_out  # nothing held is ready to go
        return worth_asking and (starving or len(self._held) <= self._refill_below)

    def _wait_time(self) -> float:
        """Seconds until something may be ready without being told (a host's delay ends, a
        deferred request falls due, the idle poll); workers finishing wake the feeder."""
        wait = self._poll
        ready_at = self._held.next_ready_at()
        if ready_at is not None and self._handed_out < self._most_handed_out:
            wait = min(wait, ready_at - self._hosts.clock())
        if self._due_at is not None:
            wait = min(wait, self._due_at - time.time())
        return max(_MIN_WAIT, wait)
