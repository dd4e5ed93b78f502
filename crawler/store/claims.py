"""Claims: leasing due pending requests from the SQLite frontier to this run, hosts taking turns.

A claim marks up to N due pending rows with this run's id and a lease that ends after
`LEASE_SECONDS` unless it is renewed (every `LEASE_SECONDS / 4`, with the run's heartbeat).
So several processes can share one file, none taking a row another holds, and a dead
process's claims return to the frontier when its lease runs out (at once when the next run on
the same machine finds its process gone: crawler.store.runs). Claims run on the writer's
connection, between its batches (crawler.store.writer).

A back-off is crawl-wide, as on PostgreSQL (crawler.store.pg_claims): a claim skips a host
whose stored `hosts.not_before` has not passed, unless this process holds requests of it
(then it paces the host itself, and knows of the pause: see `stored_pauses`). And when
another process sharing the file has committed since the last look (`PRAGMA
data_version`), at most every `PAUSES_EVERY` seconds, the writer reads the stored pauses of
the hosts this process holds requests of: one index lookup per such host, however many
hosts and pending rows the file has, and nothing at all while no other process writes.

So is `concurrency_per_host`. A run has no more of a host in flight than it holds under
lease, nor more than `min(concurrency, concurrency_per_host)` (the runs sharing a file run
one crawl's settings), though it holds more (enough to keep a fast host busy between two
claims). So a claim counts, for each other run that holds live leases of the host, the
lesser of the two: what the others may have in flight. While that leaves this run its own
most within the host's `concurrency_per_host`, it leases freely; else only as many as
leave its own leases within what remains. So the runs together never have more than the
cap in flight: one run alone holds a host up to its own limit, and a second one gets a share
only if the cap exceeds what the first may have in flight. The count is part of the
claim's statement (one run's claim at a time: SQLite has one writer) and reads an index of
the host's leased rows, not its pending ones.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, final

import aiosqlite

from crawler.records import Claimed, HostRecord, RobotsRecord
from crawler.settings import Settings
from crawler.spider.http import Request
from crawler.store.bulk import select_in
from crawler.store.refresh import attach_previous

__all__ = [
    "HOSTS_PER_CLAIM",
    "LEASE_SECONDS",
    "PAUSES_EVERY",
    "RENEW_LEASES",
    "ClaimBatch",
    "ClaimOrder",
    "ClaimSource",
    "Claims",
    "LeaseRenewal",
    "claimed_from_row",
    "host_from_row",
    "robots_from_row",
]

LEASE_SECONDS: Final = 120.0
HOSTS_PER_CLAIM: Final = 256
"""Hosts with pending requests one claim looks at, at most (see `ClaimOrder.hosts`)."""
PAUSES_EVERY: Final = 0.25
"""Least seconds between two reads of the stored pauses of the hosts a process holds (see
`Claims.stored_pauses`): about as often as another process commits (`write_interval`)."""


@final
@dataclass(slots=True, kw_only=True)
class ClaimBatch:
    """What a claim returned, and what the frontier looked like if it returned nothing."""

    claimed: list[Claimed]
    more: bool = False
    """Some host had more due requests than this claim took (or the claim stopped at its
    limit): another claim would find work even if nothing is committed in between."""
    pending: int = 0
    """Whether pending rows are left (leased elsewhere or not yet due): 1 or 0, asked only
    when none was claimed (a count would be a scan of the frontier)."""
    next_due: float | None = None
    """When a claim is next worth making for a request that was not due: the earliest
    `not_before` of a pending request or of a paused host, later than the claim's start.
    It may have passed by the time the feeder reads it: then it claims again at once."""
    leased_elsewhere: int = 0
    """Whether other runs (processes sharing the file) hold pending rows under a live lease:
    1 or 0, asked only when none was claimed. Their pages may bring new work at any
    moment."""
    capped: bool = False
    """Nothing was claimed because hosts with pending requests already hold `per_host` in
    memory; then `pending` and `next_due` are not counted (that would scan the frontier)."""
    hosts: list[HostRecord] = field(default_factory=list)
    """The stored state of the claimed requests' hosts that the crawl does not hold in
    memory (see crawler.fetch.politeness), to be restored before their requests go out."""
    robots: list[RobotsRecord] = field(default_factory=list)
    """The stored robots.txt answers of those same hosts."""


class ClaimSource(Protocol):
    """Where a writer's claims and lease renewals go (`Claims` for SQLite,
    crawler.store.pg_claims for PostgreSQL)."""

    async def claim(
        self,
        limit: int,
        held: Mapping[str, int],
        per_host: int,
        known: Callable[[str], bool] | None = None,
    ) -> ClaimBatch:
        """Lease up to `limit` due pending requests to this run (with the stored state of
        the claimed hosts not `known`)."""

    async def renew_leases_if_due(self) -> None:
        """Extend this run's leases and heartbeat when it is time."""

    async def stored_pauses(self, hosts: Callable[[], Collection[str]]) -> list[HostRecord]:
        """When it is time, the stored state of those of `hosts()` (the hosts this process
        holds requests of) whose `not_before` has not passed: what other processes saw."""


@final
class ClaimOrder:
    """The order claims take requests in, on either database: hosts take turns (a claim
    starts after the host the last one ended with, and wraps around to the first), and a
    host's requests go by priority, then oldest first (newest first with `order = "dfs"`)."""

    def __init__(self, settings: Settings) -> None:
        self.depth_first = settings.order == "dfs"
        self.sql = "priority DESC, id DESC" if self.depth_first else "priority DESC, id"
        """The ORDER BY of a host's pending requests."""
        self.last_host = ""
        """The host the last claim ended with: the next one starts after it."""

    async def hosts(self, hosts_after: Callable[[str, int], Awaitable[list[str]]]) -> list[str]:
        """Up to `HOSTS_PER_CLAIM` hosts with pending requests, in turn: those after the
        host the last claim ended with, then from the first host on (`hosts_after(host, n)`
        reads the first `n` after `host`)."""
        hosts = await hosts_after(self.last_host, HOSTS_PER_CLAIM)
        if len(hosts) < HOSTS_PER_CLAIM and self.last_host:
            wrapped = await hosts_after("", HOSTS_PER_CLAIM - len(hosts))
            hosts.extend(host for host in wrapped if host <= self.last_host)
        return hosts

    def sort(self, claimed: list[Claimed]) -> None:
        """Put the requests of one claim, taken host by host, in the crawl's order."""
        descending = self.depth_first
        claimed.sort(key=lambda c: (-c.request.priority, -c.id if descending else c.id))


@final
class LeaseRenewal:
    """When a run's leases and heartbeat are to be extended: every `LEASE_SECONDS / 4`."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def due(self) -> bool:
        """Whether it is time; if so, the next period starts now."""
        if time.monotonic() - self._last <= LEASE_SECONDS / 4:
            return False
        self._last = time.monotonic()
        return True


@final
class Claims:
    """The claims of one run, on the writer's connection."""

    def __init__(self, conn: aiosqlite.Connection, *, run_id: int, settings: Settings) -> None:
        self._conn = conn
        self._run_id = run_id
        self._settings = settings
        self._order = ClaimOrder(settings)
        self._renewal = LeaseRenewal()
        self.refetches = False
        """Whether claimed requests may have a stored page (re-fetches, which need it)."""
        self._data_version: int | None = None
        """`PRAGMA data_version` at the last read of stored pauses: it changes only when
        another connection (another process) commits."""
        self._pauses_read_at = -math.inf

    async def prepare(self) -> None:
        """Create what this run's claim order needs (depth-first: an index of its own)."""
        if self._order.depth_first:
            await self._conn.execute(
                "CREATE INDEX IF NOT EXISTS requests_frontier_dfs "
                "ON requests (host, priority DESC, id DESC) WHERE state = 'pending'"
            )

    async def claim(
        self,
        limit: int,
        held: Mapping[str, int],
        per_host: int,
        known: Callable[[str], bool] | None = None,
    ) -> ClaimBatch:
        """Lease up to `limit` due pending requests (see `Storage.claim`); with `known`, also
        read the stored state of the claimed hosts it says are not in memory."""
        now = time.time()
        sql = _CLAIM.format(order=self._order.sql)
        per_host = per_host or limit
        claimed: list[Claimed] = []
        fresh_hosts: list[str] = []
        capped = more = False
        hosts = await self._order.hosts(self._hosts_after)
        for host in hosts:
            if len(claimed) >= limit:
                more = True
                break
            host_room = per_host - held.get(host, 0)
            if host_room < max(1, per_host // 4):
                capped = True  # refill a host in chunks, not one request per finished page
                continue
            room = min(limit - len(claimed), host_room)
            # a host held here is paced here (its pause learned: `stored_pauses`)
            paused_after = math.inf if held.get(host) else now
            rows = await self._lease(sql, host, now, paused_after, room)
            claimed.extend(claimed_from_row(row) for row in rows)
            if rows and known is not None and not known(host):
                fresh_hosts.append(host)
            more = more or len(rows) == room
            self._order.last_host = host
        self._order.sort(claimed)
        if self.refetches and claimed:
            await attach_previous(self._conn, claimed)
        if claimed or capped:
            batch = ClaimBatch(claimed=claimed, more=more, capped=capped and not claimed)
            if fresh_hosts:
                batch.hosts, batch.robots = await self._stored_hosts(fresh_hosts)
            return batch
        async with self._conn.execute(_PENDING_SUMMARY, (now, self._run_id)) as cursor:
            row = await cursor.fetchone()
        pending, next_due, elsewhere = (row[0], row[1], row[2]) if row else (0, None, 0)
        # those not held here may be paused: the claim is worth making when one's pause ends
        if pending and (unheld := [host for host in hosts if not held.get(host)]):
            paused = await select_in(self._conn, _PAUSE_ENDS, unheld, params=(now,))
            ends = [float(row[0]) for row in paused if row[0] is not None]
            if next_due is not None:
                ends.append(float(next_due))
            next_due = min(ends, default=None)
        return ClaimBatch(
            claimed=[],
            pending=int(pending),
            next_due=next_due,
            leased_elsewhere=int(elsewhere or 0),
        )

    async def _lease(
        self, sql: str, host: str, now: float, paused_after: float, room: int
    ) -> list[sqlite3.Row]:
        """Lease up to `room` of the host's due requests, no more than its cap leaves this
        run beside the other runs' leases (`_CLAIM`); return their rows."""
        cap = self._settings.for_host(host).concurrency_per_host
        most = min(cap, self._settings.concurrency)  # in flight, in one run
        params = (self._run_id, now + LEASE_SECONDS, host, now, paused_after, room, cap, most)
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def stored_pauses(self, hosts: Callable[[], Collection[str]]) -> list[HostRecord]:
        """The stored state of those of `hosts()` whose `not_before` has not passed, when
        another process committed since the last read and `PAUSES_EVERY` seconds passed;
        else nothing (and `hosts` is not called). For `Hosts.learn`, which keeps only what
        it does not know (this process's own rows come back too)."""
        if time.monotonic() - self._pauses_read_at < PAUSES_EVERY:
            return []
        self._pauses_read_at = time.monotonic()
        async with self._conn.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version == self._data_version:
            return []
        self._data_version = version
        held = list(hosts())
        if not held:
            return []
        async with self._conn.execute(_STORED_PAUSES, (json.dumps(held), time.time())) as cursor:
            return [host_from_row(row) for row in await cursor.fetchall()]

    async def renew_leases_if_due(self) -> None:
        """Extend this run's leases and heartbeat, every `LEASE_SECONDS / 4`."""
        if not self._renewal.due():
            return
        await self._conn.execute(RENEW_LEASES, (time.time() + LEASE_SECONDS, self._run_id))
        await self._conn.execute(
            "UPDATE crawls SET heartbeat_at = ? WHERE id = ?", (time.time(), self._run_id)
        )

    async def _stored_hosts(self, hosts: list[str]) -> tuple[list[HostRecord], list[RobotsRecord]]:
        """What `hosts` and `robots` hold about `hosts` (hosts never fetched have no state)."""
        host_rows = await select_in(self._conn, _STORED_HOSTS, hosts)
        robots_rows = await select_in(self._conn, _STORED_ROBOTS, hosts)
        return (
            [host_from_row(row) for row in host_rows],
            [robots_from_row(row) for row in robots_rows],
        )

    async def _hosts_after(self, after: str, count: int) -> list[str]:
        async with self._conn.execute(_PENDING_HOSTS, (after, count)) as cursor:
            return [str(row[0]) for row in await cursor.fetchall()]


def claimed_from_row(row: Sequence[object]) -> Claimed:
    """Rebuild a claimed request from the columns a claim returns (also PostgreSQL's)."""
    row_id, url, method, callback, headers, meta, depth, priority, attempts = row
    request = Request(
        str(url),
        callback=str(callback or "parse"),
        method=str(method),
        headers=json.loads(str(headers)) if headers else None,
        meta=json.loads(str(meta)) if meta else None,
        priority=int(priority),  # type: ignore[call-overload]
        depth=int(depth),  # type: ignore[call-overload]
    )
    return Claimed(id=int(row_id), request=request, attempts=int(attempts))  # type: ignore[call-overload]


def host_from_row(row: Sequence[object]) -> HostRecord:
    """A host's stored state from the columns of `STORED_HOSTS` (also PostgreSQL's)."""
    host, crawl_delay, delay, concurrency, not_before, last_status, cookies = row
    return HostRecord(
        host=str(host),
        crawl_delay=crawl_delay,  # type: ignore[arg-type]
        throttle_delay=delay,  # type: ignore[arg-type]
        throttle_concurrency=concurrency,  # type: ignore[arg-type]
        not_before=not_before,  # type: ignore[arg-type]
        last_status=last_status,  # type: ignore[arg-type]
        cookies=cookies,  # type: ignore[arg-type]
    )


def robots_from_row(row: Sequence[object]) -> RobotsRecord:
    """A robots.txt answer from the columns of `STORED_ROBOTS` (also PostgreSQL's)."""
    url, host, fetched_at, status, outcome, crawl_delay, body, error = row
    return RobotsRecord(
        url=str(url),
        host=str(host),
        fetched_at=str(fetched_at),
        status=status,  # type: ignore[arg-type]
        outcome=str(outcome),
        crawl_delay=crawl_delay,  # type: ignore[arg-type]
        body=body,  # type: ignore[arg-type]
        error=error,  # type: ignore[arg-type]
    )


_STORED_HOSTS: Final = (
    "SELECT host, crawl_delay, throttle_delay, throttle_concurrency, not_before, last_status, "
    "cookies "
    "FROM hosts WHERE host IN ({marks}) AND updated_at IS NOT NULL"
)
_STORED_ROBOTS: Final = (
    "SELECT url, host, fetched_at, status, outcome, crawl_delay, body, error "
    "FROM robots WHERE host IN ({marks})"
)
_CLAIM: Final = (
    "UPDATE requests SET lease_owner = ?1, lease_expires = ?2 WHERE id IN ("
    " SELECT id FROM requests WHERE state = 'pending' AND host = ?3"
    " AND (lease_expires IS NULL OR lease_expires < ?4)"
    " AND (not_before IS NULL OR not_before <= ?4)"
    " AND NOT EXISTS (SELECT 1 FROM hosts WHERE host = ?3 AND not_before > ?5)"
    " ORDER BY {order} LIMIT ("
    "  SELECT CASE WHEN others + ?8 <= ?7 THEN ?6 ELSE max(0, min(?6, ?7 - others - own)) END"
    "  FROM (SELECT coalesce(sum(min(leased, ?8)) FILTER (WHERE owner != ?1), 0) AS others,"
    "   coalesce(sum(leased) FILTER (WHERE owner = ?1), 0) AS own"
    "   FROM (SELECT lease_owner AS owner, count(*) AS leased"
    "    FROM requests INDEXED BY requests_host_leases"
    "    WHERE host = ?3 AND lease_owner IS NOT NULL AND lease_expires >= ?4"
    "    GROUP BY lease_owner)))) "
    "RETURNING id, url, method, callback, headers, meta, depth, priority, attempts"
)
"""Given (run id, lease end, host, now, paused after, room, the host's cap, what one run
has in flight of the host at most): the host's due pending requests, none while the host
is paused after the time given; `room` of them while what the other runs' live leases
may have in flight leaves this run its own most, else only as many as the cap leaves
(counted through `requests_host_leases`: the host's leased rows only)."""
_PAUSE_ENDS: Final = "SELECT min(not_before) FROM hosts WHERE not_before > ? AND host IN ({marks})"
"""When the first of a claim's paused hosts may be claimed again."""
_STORED_PAUSES: Final = (
    "SELECT hosts.host, crawl_delay, throttle_delay, throttle_concurrency, not_before, "
    "last_status, NULL FROM json_each(?) AS held JOIN hosts ON hosts.host = held.value "
    "WHERE hosts.not_before > ?"
)
"""The stored state of the given hosts that are paused now (one index lookup each)."""
RENEW_LEASES: Final = (
    "UPDATE requests SET lease_expires = ? WHERE lease_owner = ? AND state = 'pending'"
)
"""Extend a run's leases (through `requests_leased`: the rows it holds, not the frontier)."""
_PENDING_SUMMARY: Final = (
    "SELECT EXISTS (SELECT 1 FROM requests WHERE state = 'pending'), "
    "(SELECT min(not_before) FROM requests WHERE state = 'pending' AND not_before > ?1), "
    "EXISTS (SELECT 1 FROM requests WHERE lease_owner IS NOT NULL AND lease_owner != ?2 "
    "AND lease_expires >= ?1 AND state = 'pending')"
)
"""Given (now, run id): whether any request is pending, the earliest `not_before` still to
come, and whether other runs hold some under a live lease: three index seeks
(`requests_frontier`, `requests_due`, `requests_leased`), whatever the size of the frontier.
A `not_before` already past says nothing of when a claim is worth making: its request was
not claimed because its host is paused or capped, or another run holds it."""
_PENDING_HOSTS: Final = """
WITH RECURSIVE next_host (host, n) AS (
    SELECT (SELECT min(host) FROM requests WHERE state = 'pending' AND host > ?), 1
    UNION ALL
    SELECT (SELECT min(host) FROM requests WHERE state = 'pending' AND host > next_host.host),
           n + 1
    FROM next_host WHERE next_host.host IS NOT NULL AND n < ?
)
SELECT host FROM next_host WHERE host IS NOT NULL
"""
"""Hosts with pending requests, in order, after a given one: one index seek per host."""
