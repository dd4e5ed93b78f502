"""Claims on PostgreSQL: leasing due pending requests to this run, with the politeness of the
whole crawl (every worker on every machine) decided inside the claim.

A claim takes, in one transaction, the `hosts` rows of hosts with due pending requests
that are ready (`not_before` passed) with `FOR UPDATE SKIP LOCKED`: a host another worker is
claiming right now is skipped, never waited for. For each host it holds it counts the
requests leased under a live lease by anyone (that is the host's in-flight count: a worker
that dies leaks nothing, its leases just expire) and leases at most
`concurrency_per_host` (or the host's `throttle_concurrency`, if lower) minus that many,
with `FOR UPDATE SKIP LOCKED` again. With a delay between requests (`delay_per_host`, the
host's `crawl_delay` from robots.txt), it leases only what the next `_DELAY_HORIZON` seconds
can start; each start then takes its crawl-wide turn (crawler.store.pg_pacing), which moves
`not_before` on, so the host waits for that worker. Every statement is about one host's
rows, so the frontier could be sharded by host (Citus) with claims inside a shard.

A claim that takes nothing (every host in back-off, every request leased or not yet due)
tells the feeder when to ask again from indexes, in about as many reads as a claim that
takes something, whatever the size of the frontier: whether a request is pending at all,
the earliest end of the back-off of the hosts it looked at, when the next deferred request
falls due (`requests_due`), and whether another run holds leases (`requests_lease_owner`).

A pause another worker stores (a 429 or 503's Retry-After) reaches the requests this worker
already holds too: every `PAUSES_EVERY` seconds the writer reads the stored pauses of the
hosts it holds (`stored_pauses`, one index lookup per such host).

Leases end after `LEASE_SECONDS` unless renewed with the heartbeat (crawler.store.claims).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Final, final

import asyncpg

from crawler.links import host_of
from crawler.records import Claimed, HostRecord
from crawler.settings import Settings
from crawler.store.claims import (
    HOSTS_PER_CLAIM,
    LEASE_SECONDS,
    PAUSES_EVERY,
    ClaimBatch,
    ClaimOrder,
    LeaseRenewal,
    claimed_from_row,
    host_from_row,
    robots_from_row,
)
from crawler.store.pg_link import PgLink
from crawler.store.pg_refresh import pg_attach_previous

__all__ = ["PgClaims"]

_DELAY_HORIZON: Final = 0.25
"""Seconds of a delayed host's turns one claim may take, and at least two turns: a slow host
is shared out a few requests at a time, so that every worker gets its share of it."""


@final
class PgClaims:
    """The claims of one run, on its link to the server."""

    def __init__(self, link: PgLink, *, run_id: int, settings: Settings) -> None:
        self._link = link
        self._run_id = run_id
        self._settings = settings
        self._order = ClaimOrder(settings)
        self._claim_sql = _CLAIM.format(order=self._order.sql)
        self._renewal = LeaseRenewal()
        self._pauses_read_at = -math.inf
        self.refetches = False
        """Whether claimed requests may have a stored page (re-fetches, which need it)."""

    async def claim(
        self,
        limit: int,
        held: Mapping[str, int],
        per_host: int,
        known: Callable[[str], bool] | None = None,
    ) -> ClaimBatch:
        """Lease up to `limit` due pending requests (see `Storage.claim`); with `known`, also
        read the stored state and robots.txt answers of the claimed hosts not in memory."""

        async def claim(conn: asyncpg.Connection) -> ClaimBatch:
            batch = await self._claim(conn, limit, held, per_host or limit)
            if self.refetches and batch.claimed:
                await pg_attach_previous(conn, batch.claimed)
            claimed_hosts = {host_of(c.request.url) for c in batch.claimed}
            fresh = {h for h in claimed_hosts if known is not None and not known(h)}
            if fresh:
                hosts = sorted(fresh)
                batch.hosts = [
                    host_from_row(tuple(r)) for r in await conn.fetch(_STORED_HOSTS, hosts)
                ]
                batch.robots = [
                    robots_from_row(tuple(r)) for r in await conn.fetch(_STORED_ROBOTS, hosts)
                ]
            return batch

        return await self._link.transaction(claim)

    async def _claim(
        self, conn: asyncpg.Connection, limit: int, held: Mapping[str, int], per_host: int
    ) -> ClaimBatch:
        now = time.time()
        wanted: list[str] = []
        capped = False
        pending_hosts = await self._order.hosts(partial(_hosts_after, conn))
        for host in pending_hosts:
            if per_host - held.get(host, 0) < max(1, per_host // 4):
                capped = True  # refill a host in chunks, not one request per finished page
            else:
                wanted.append(host)
        rows = await conn.fetch(_READY_HOSTS, wanted, now) if wanted else []
        # Counted after the lock, in a statement of its own: its snapshot then holds the
        # leases of the claim that held the lock before (one begun earlier would not).
        locked = [str(row[0]) for row in rows]
        counted = await conn.fetch(_LEASED, locked, now) if locked else []
        leases = {str(row[0]): int(row[1]) for row in counted}
        claimed: list[Claimed] = []
        more = False
        for host, crawl_delay, concurrency in rows:
            leased = leases.get(host, 0)
            room = min(limit - len(claimed), per_host - held.get(host, 0))
            room = min(room, self._cap(concurrency) - int(leased))
            delay = self._delay(crawl_delay)
            if delay > 0:
                room = min(room, max(2, math.floor(_DELAY_HORIZON / delay)))
            if room <= 0:
                continue
            got = await conn.fetch(
                self._claim_sql, host, now, room, self._run_id, now + LEASE_SECONDS
            )
            claimed.extend(claimed_from_row(tuple(row)) for row in got)
            more = more or len(got) == room
            self._order.last_host = host
            if len(claimed) >= limit:
                more = True
                break
        self._order.sort(claimed)
        if claimed:
            return ClaimBatch(claimed=claimed, more=more)
        waiting = await conn.fetchrow(_WAITING_HOSTS, wanted, now) if wanted else None
        backing_off, next_due = (int(waiting[0]), waiting[1]) if waiting else (0, None)
        if capped and not rows and not backing_off:
            return ClaimBatch(claimed=[], capped=True)
        contended = len(rows) + backing_off < len(wanted)  # hosts another claim holds
        return await self._idle(conn, now, pending_hosts, next_due, contended=contended)

    async def _idle(
        self,
        conn: asyncpg.Connection,
        now: float,
        pending_hosts: list[str],
        next_due: float | None,
        *,
        contended: bool,
    ) -> ClaimBatch:
        """What a claim that took nothing tells the feeder, from indexes: whether any request
        is pending (`pending` is 1 or 0, not a count: counting is a scan of the frontier),
        when the next one falls due, and whether other runs may add work at any moment.

        The hosts this claim looked at (`pending_hosts`, at most `HOSTS_PER_CLAIM` of them)
        gave the earliest end of a host's back-off or turn (`next_due`). When they are not
        all the hosts with pending requests, the next claim looks at the next ones (it
        starts after the last of them), and `next_due` says nothing of the others: then it
        is left out, and the feeder asks again after its idle poll."""
        if not pending_hosts:
            return ClaimBatch(claimed=[])
        if len(pending_hosts) >= HOSTS_PER_CLAIM:
            self._order.last_host = pending_hosts[-1]
            next_due = None
        due = await conn.fetchval(_NEXT_DUE, now)
        if due is not None:
            next_due = float(due) if next_due is None else min(next_due, float(due))
        elsewhere = contended or bool(await conn.fetchval(_LEASED_ELSEWHERE, self._run_id, now))
        return ClaimBatch(claimed=[], pending=1, next_due=next_due, leased_elsewhere=int(elsewhere))

    def _cap(self, concurrency: int | None) -> int:
        cap = self._settings.concurrency_per_host
        return min(cap, int(concurrency)) if concurrency else cap

    def _delay(self, crawl_delay: float | None) -> float:
        delay = self._settings.delay_per_host
        if crawl_delay is not None:
            delay = max(delay, min(float(crawl_delay), self._settings.crawl_delay_max))
        return delay

    async def stored_pauses(self, hosts: Callable[[], Collection[str]]) -> list[HostRecord]:
        """The stored state of those of `hosts()` (the hosts this worker holds requests of)
        whose `not_before` has not passed, every `PAUSES_EVERY` seconds; else nothing (and
        `hosts` is not called). A claim skips a paused host, but the requests a worker
        already holds when another stores a pause would go out at this worker's pace:
        `Hosts.learn` holds them back. It keeps only what it does not know: this worker's
        own rows come back too, and a delayed host's crawl-wide turns
        (crawler.store.pg_pacing), which it would wait for anyway."""
        if time.monotonic() - self._pauses_read_at < PAUSES_EVERY:
            return []
        self._pauses_read_at = time.monotonic()
        held = sorted(hosts())
        if not held:
            return []

        async def read(conn: asyncpg.Connection) -> list[HostRecord]:
            rows = await conn.fetch(_STORED_PAUSES, held, time.time())
            return [host_from_row(tuple(row)) for row in rows]

        return await self._link.transaction(read)

    async def renew_leases_if_due(self) -> None:
        """Extend this run's leases and heartbeat, every `LEASE_SECONDS / 4`."""
        if self._renewal.due():
            await self._link.transaction(self._renew)

    async def _renew(self, conn: asyncpg.Connection) -> None:
        now = time.time()
        await conn.execute(
            "UPDATE requests SET lease_expires = $1 WHERE lease_owner = $2 AND state = 'pending'",
            now + LEASE_SECONDS,
            self._run_id,
        )
        await conn.execute("UPDATE crawls SET heartbeat_at = $1 WHERE id = $2", now, self._run_id)


async def _hosts_after(conn: asyncpg.Connection, after: str, count: int) -> list[str]:
    return [r[0] for r in await conn.fetch(_PENDING_HOSTS, after, count)]


_STORED_HOSTS: Final = (
    "SELECT host, crawl_delay, throttle_delay, throttle_concurrency, not_before, last_status, "
    "cookies "
    "FROM hosts WHERE host = ANY($1::text[]) AND updated_at IS NOT NULL"
)
_STORED_ROBOTS: Final = (
    "SELECT url, host, fetched_at, status, outcome, crawl_delay, body, error "
    "FROM robots WHERE host = ANY($1::text[])"
)
_STORED_PAUSES: Final = (
    "SELECT host, crawl_delay, throttle_delay, throttle_concurrency, not_before, last_status, "
    "NULL FROM hosts WHERE host = ANY($1::text[]) AND not_before > $2"
)
"""The stored state of the given hosts that are paused now (one index lookup each)."""
_READY_HOSTS: Final = """
SELECT host, crawl_delay, throttle_concurrency FROM hosts
WHERE host = ANY($1::text[]) AND (not_before IS NULL OR not_before <= $2)
ORDER BY host FOR UPDATE SKIP LOCKED
"""
"""The hosts of a claim that are ready (no back-off, their turn has come) and that no other
worker is claiming (locked until the claim commits; a host in back-off is not locked)."""
_WAITING_HOSTS: Final = """
SELECT count(*), min(not_before) FROM hosts WHERE host = ANY($1::text[]) AND not_before > $2
"""
"""How many of a claim's hosts are in back-off or waiting for their turn, and until when."""
_LEASED: Final = """
SELECT host, count(*) FROM requests WHERE host = ANY($1::text[]) AND state = 'pending'
AND lease_owner IS NOT NULL AND lease_expires >= $2 GROUP BY host
"""
"""The requests of those hosts under a live lease: what is in flight, crawl-wide."""
_CLAIM: Final = """
UPDATE requests SET lease_owner = $4, lease_expires = $5 WHERE id IN (
    SELECT id FROM requests WHERE state = 'pending' AND host = $1
    AND (lease_expires IS NULL OR lease_expires < $2)
    AND (not_before IS NULL OR not_before <= $2)
    ORDER BY {order} LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING id, url, method, callback, headers::text, meta::text, depth, priority, attempts
"""
_NEXT_DUE: Final = """
SELECT min(not_before) FROM requests WHERE state = 'pending' AND not_before > $1
"""
"""When the next deferred request falls due (the first entry of `requests_due`)."""
_LEASED_ELSEWHERE: Final = """
SELECT EXISTS (SELECT 1 FROM requests WHERE state = 'pending' AND lease_owner IS NOT NULL
               AND lease_owner < $1 AND lease_expires >= $2)
    OR EXISTS (SELECT 1 FROM requests WHERE state = 'pending' AND lease_owner IS NOT NULL
               AND lease_owner > $1 AND lease_expires >= $2)
"""
"""Whether another run holds a pending request under a live lease: the first one found in
`requests_lease_owner`, on either side of this run's own leases, which are not read (as
many as it holds in memory, where `lease_owner != $1` read them all, each from the table).
Expired leases of other runs are read from the index, until a claim takes their requests."""
_PENDING_HOSTS: Final = """
WITH RECURSIVE next_host (host, n) AS (
    SELECT (SELECT min(host) FROM requests WHERE state = 'pending' AND host > $1), 1
    UNION ALL
    SELECT (SELECT min(host) FROM requests WHERE state = 'pending' AND host > next_host.host),
           n + 1
    FROM next_host WHERE next_host.host IS NOT NULL AND n < $2
)
SELECT host FROM next_host WHERE host IS NOT NULL
"""
