"""The feeder's per-host ready queues: claimed requests wait here, in memory, until their host
may take another one; hosts with ready requests take turns (round-robin).

One FIFO queue in discovery order would make the workers wait behind the first slow host
(Scrapy's old head-of-line blocking). Here every host has its own deque, and a host with
held requests is in exactly one of three places:

- `turns`: it may be ready; hosts are tried in round-robin order;
- `waiting`: a heap ordered by the time its delay or cool-down ends;
- `blocked`: its in-flight limit is reached; a worker finishing one of its requests
  (`unblock`) puts it back in `turns`.

So handing out a request costs O(log hosts), however many hosts are waiting. A host whose
robots.txt is not known yet gets one request in flight (the one that fetches robots.txt);
requests robots.txt disallows are set aside for the feeder to record as skipped.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Protocol, final

from crawler.fetch.politeness import Hosts
from crawler.links import host_of
from crawler.records import Claimed

__all__ = ["HostQueues", "RobotsVerdicts"]


class RobotsVerdicts(Protocol):
    """What the queues need of robots.txt (`crawler.fetch.robots.RobotsCache` provides it)."""

    def allows(self, url: str) -> bool | None:
        """Whether `url` may be fetched; None while its robots.txt is not known."""
        ...


@final
class HostQueues:
    """Claimed requests held per host, handed out only when their host is ready."""

    def __init__(self, hosts: Hosts, robots: RobotsVerdicts) -> None:
        self._hosts = hosts
        self._robots = robots
        self._queues: dict[str, deque[Claimed]] = {}
        self._turns: deque[str] = deque()
        self._waiting: list[tuple[float, str]] = []
        self._blocked: set[str] = set()
        self._held = 0
        self._refused: list[Claimed] = []

    def __len__(self) -> int:
        """The number of requests held (refused ones not included)."""
        return self._held

    def holds(self, host: str) -> bool:
        """Whether requests of `host` are held here."""
        return host in self._queues

    def held_by_host(self) -> dict[str, int]:
        """Requests in memory per host: held here or handed out and not finished."""
        held = {host: len(queue) for host, queue in self._queues.items()}
        for host, reserved in self._hosts.reservations().items():
            held[host] = held.get(host, 0) + reserved
        return held

    def hosts_with_work(self) -> set[str]:
        """The hosts of the requests in memory: held here or handed out and not finished."""
        return self._queues.keys() | self._hosts.reservations().keys()

    def add(self, claimed: Claimed) -> None:
        """Hold a claimed request until its host is ready."""
        if self._robots.allows(claimed.request.url) is False:
            self._refused.append(claimed)
            return
        host = host_of(claimed.request.url)
        queue = self._queues.get(host)
        if queue is None:
            queue = self._queues[host] = deque()
            self._turns.append(host)
        queue.append(claimed)
        self._held += 1

    def take_refused(self) -> list[Claimed]:
        """Return (and forget) the held requests that robots.txt disallows."""
        refused, self._refused = self._refused, []
        return refused

    def pop_ready(self, now: float) -> Claimed | None:
        """Hand out the next request whose host may take one now, reserving the host."""
        while self._waiting and self._waiting[0][0] <= now:
            _, host = heapq.heappop(self._waiting)
            self._turns.append(host)
        while self._turns:
            host = self._turns.popleft()
            queue = self._queues[host]
            self._drop_disallowed(queue)
            if not queue:
                del self._queues[host]
                continue
            state = self._hosts[host]
            known = self._robots.allows(queue[0].request.url) is not None
            if state.reserved >= (state.throttle.limit if known else 1):
                self._blocked.add(host)
                continue
            if (ready_at := state.ready_at()) > now:
                heapq.heappush(self._waiting, (ready_at, host))
                continue
            claimed = queue.popleft()
            self._held -= 1
            if queue:
                self._turns.append(host)
            else:
                del self._queues[host]
            self._hosts.reserve(host)
            return claimed
        return None

    def unblock(self, host: str) -> None:
        """A request of `host` finished, so the host may take another one."""
        if host in self._blocked:
            self._blocked.discard(host)
            self._turns.append(host)

    def next_ready_at(self) -> float | None:
        """When the first waiting host's delay or cool-down ends, if any host is waiting."""
        return self._waiting[0][0] if self._waiting else None

    def drain(self) -> list[Claimed]:
        """Return (and forget) every held request: the crawl is stopping."""
        held = [claimed for queue in self._queues.values() for claimed in queue]
        held.extend(self.take_refused())
        self._queues.clear()
        self._turns.clear()
        self._waiting.clear()
        self._blocked.clear()
        self._held = 0
        return held

    def _drop_disallowed(self, queue: deque[Claimed]) -> None:
        """Set aside the requests at the head of `queue` that robots.txt now disallows."""
        while queue and self._robots.allows(queue[0].request.url) is False:
            self._refused.append(queue.popleft())
            self._held -= 1
