"""The writer's side of admission: which discovered requests become new `pending` rows.

The frontier (crawler.frontier.gate) refuses what it can decide from the URL alone; what is left
arrives at the writer as `Candidate`s. Here, inside the write transaction, duplicates within
a batch are counted, and the page budgets apply: `max_pages` (requests admitted in the whole
file) and `max_pages_per_host`. Both read counters that triggers keep in the same file
(`frontier_counts`, `hosts`: see crawler.store.schema), inside the transaction: a budget holds for
every process sharing the file, and costs the same at any size of the frontier. A candidate
over budget is stored whole as `skipped` with that reason (callback, meta, headers,
priority), so that a later run can fetch it exactly as first asked.

Nothing is looked up here while no budget could be reached even if every candidate were new
(always, without budgets): the insert drops what the file already holds (a trigger looks
each fingerprint up in the set, crawler.store.fingerprints), except a URL refused for
depth, which it reopens. Only a batch that could reach a budget looks its candidates up
first, to spend the budget on new ones only.

A resumed crawl reopens the rows an earlier run skipped only because its budget was spent,
as far as this run's budgets allow: the limit belonged to that run, not to the URLs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection
from typing import Final

import aiosqlite

from crawler.errors import SkipReason
from crawler.records import Candidate
from crawler.settings import Settings
from crawler.stats import Stats
from crawler.store import statements
from crawler.store.bulk import select_in
from crawler.store.fingerprints import request_id_of

__all__ = ["Budgets"]

Row = tuple[object, ...]


class Budgets:
    """One run's page budgets, applied to each write batch's new requests.

    The counts it reads (`_existing`, `admitted`, `_admitted_by_host`) and the reopening of
    budget skips are SQLite's here; crawler.store.pg_writer reads PostgreSQL's."""

    def __init__(self, conn: aiosqlite.Connection, *, run_id: int, settings: Settings) -> None:
        self._conn = conn
        self._run_id = run_id
        self._max_pages = settings.max_pages
        self._settings = settings
        self._per_host = bool(settings.max_pages_per_host) or settings.sets_per_host(
            "max_pages_per_host"
        )
        """Whether some host has a page budget (per-site settings may give one to a few)."""

    @property
    def active(self) -> bool:
        """Whether a budget applies (then a batch's admission queries the table)."""
        return bool(self._max_pages or self._per_host)

    async def load(self) -> None:
        """Reopen the requests earlier runs skipped for their budgets, as far as this run's
        budgets have room."""
        await self._reopen_budget_skips()

    async def admit(
        self, candidates: list[Candidate], now: str, tally: Stats
    ) -> tuple[list[Row], list[Row]]:
        """Return the `INSERT_REQUEST` rows for `candidates` (the insert still drops what
        the table holds) and the `INSERT_REQUEST_SKIPPED` rows of those over budget;
        duplicates within the batch are counted in `tally`. Call it inside the write
        transaction."""
        unique: dict[int, Candidate] = {}
        for candidate in candidates:
            if candidate.fingerprint in unique:
                tally.skipped[SkipReason.DUPLICATE.value] += 1
            else:
                unique[candidate.fingerprint] = candidate
        if not self.active:
            return [self._row(c, now) for c in unique.values()], []
        admitted = await self.admitted() if self._max_pages else 0
        by_host = (
            await self._admitted_by_host({c.host for c in unique.values()})
            if self._per_host
            else None
        )
        if self._room_for_all(unique.values(), admitted, by_host):
            # The insert's trigger sorts out the known ones (one lookup in the set, not two).
            return [self._row(c, now) for c in unique.values()], []
        # A budget may be reached: spend it on the candidates the file does not hold.
        existing = await self._existing(list(unique))
        tally.skipped[SkipReason.DUPLICATE.value] += len(existing)
        new = [c for fp, c in unique.items() if fp not in existing]
        rows: list[Row] = []
        over_budget: list[Row] = []
        for c in new:
            reason: SkipReason | None = None
            if self._max_pages and admitted >= self._max_pages:
                reason = SkipReason.MAX_PAGES
            elif by_host is not None and 0 < self._host_limit(c.host) <= by_host[c.host]:
                reason = SkipReason.MAX_PAGES_PER_HOST
            if reason is not None:
                over_budget.append((*self._row(c, now), reason.value, now))
                continue
            admitted += 1
            if by_host is not None:
                by_host[c.host] += 1
            rows.append(self._row(c, now))
        return rows, over_budget

    def _room_for_all(
        self, candidates: Collection[Candidate], admitted: int, by_host: Counter[str] | None
    ) -> bool:
        """Whether every budget has room for all of `candidates`, were they all new."""
        if self._max_pages and admitted + len(candidates) > self._max_pages:
            return False
        if by_host is not None:
            for host, count in Counter(c.host for c in candidates).items():
                limit = self._host_limit(host)
                if limit and by_host[host] + count > limit:
                    return False
        return True

    def _row(self, c: Candidate, now: str) -> Row:
        r = c.request
        return (
            c.url,
            c.fingerprint,
            c.host,
            r.method,
            r.callback,
            c.headers_json,
            c.meta_json,
            r.depth,
            r.priority,
            c.parent_id,
            self._run_id,
            now,
        )

    async def _reopen_budget_skips(self) -> None:
        """Put rows skipped for `max_pages` or `max_pages_per_host` back to pending, oldest
        first, as far as this run's budgets have room (each host's, with a per-host budget).
        The triggers count each reopened row."""
        admitted = await self.admitted()
        room = max(0, self._max_pages - admitted) if self._max_pages else -1  # -1: no limit
        hosts: list[str | None] = [None]  # None: every host at once, without a per-host budget
        if self._per_host:
            hosts = list(await self._budget_skipped_hosts())
        by_host = await self._admitted_by_host({h for h in hosts if h is not None})
        for host in hosts:
            limit = room
            if host is not None and self._host_limit(host):
                host_room = max(0, self._host_limit(host) - by_host[host])
                limit = host_room if room < 0 else min(room, host_room)
            reopened = await self._reopen(host, limit)
            if room >= 0:
                room -= reopened

    async def _budget_skipped_hosts(self) -> list[str]:
        """The hosts with rows skipped for a budget."""
        async with self._conn.execute(_BUDGET_SKIPPED_HOSTS) as cursor:
            return [str(row[0]) for row in await cursor.fetchall()]

    async def _reopen(self, host: str | None, limit: int) -> int:
        """Reopen up to `limit` (-1: all) budget skips of `host` (None: of every host),
        oldest first; return how many."""
        cursor = await self._conn.execute(_REOPEN_BUDGET_SKIPS, (host, limit))
        return cursor.rowcount

    def _host_limit(self, host: str) -> int:
        """`max_pages_per_host` for this host (0: none)."""
        return self._settings.for_host(host).max_pages_per_host

    async def _existing(self, fingerprints: list[int]) -> set[int]:
        """The fingerprints the table holds, but for URLs refused for depth (which the
        insert reopens)."""
        async with self._conn.execute(_EXISTING, (json.dumps(fingerprints),)) as cursor:
            found = await cursor.fetchall()
        return {int(fingerprint) for (fingerprint,) in found}

    async def admitted(self) -> int:
        """Requests admitted (not skipped) in the whole file, as triggers count them."""
        async with self._conn.execute(statements.ADMITTED_COUNT) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _admitted_by_host(self, hosts: set[str]) -> Counter[str]:
        sql = "SELECT host, admitted FROM hosts WHERE host IN ({marks})"
        found = await select_in(self._conn, sql, sorted(hosts))
        return Counter({str(host): int(n) for host, n in found})


_EXISTING: Final = (
    "SELECT requests.fingerprint FROM json_each(?) AS candidate JOIN requests ON requests.id = "
    f"{request_id_of('candidate.value')} "
    "WHERE NOT (requests.state = 'skipped' AND requests.reason = 'depth')"
)
"""Which of a JSON array of fingerprints the table holds, but for URLs refused for depth."""
_BUDGET_SKIPPED: Final = "state = 'skipped' AND reason IN ('max_pages', 'max_pages_per_host')"
"""Rows skipped for a reason that belongs to a run's budget, not to the URL: a resume reopens
them. Written out, not bound, so that the partial index `requests_budget_skips` applies (the
queries name it: SQLite refuses them rather than scan the whole table)."""
_BUDGET_SKIPPED_HOSTS: Final = (
    f"SELECT DISTINCT host FROM requests INDEXED BY requests_budget_skips WHERE {_BUDGET_SKIPPED}"
)
_REOPEN_BUDGET_SKIPS: Final = (
    "UPDATE requests SET state = 'pending', reason = NULL, finished_at = NULL "
    "WHERE id IN (SELECT id FROM requests INDEXED BY requests_budget_skips "
    f"WHERE {_BUDGET_SKIPPED} AND host = coalesce(?, host) ORDER BY id LIMIT ?)"
)
