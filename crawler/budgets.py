"""The writer's side of admission: which discovered requests become new `pending` rows.

The frontier (crawler.frontier) refuses what it can decide from the URL alone; what is left
arrives at the writer as `Candidate`s. Here, inside the write transaction, duplicates within
a batch are counted, and the page budgets apply: `max_pages` (requests admitted in the whole
file, counted in the transaction, so that it holds for several processes sharing the file)
and `max_pages_per_host`. A candidate over budget becomes a `Skipped` row with that reason.
Without budgets nothing is looked up: the `requests` table's unique index refuses what it
already holds during the insert.

A resumed crawl reopens the rows an earlier run skipped only because its budget was spent,
as far as this run's budgets allow: the limit belonged to that run, not to the URLs.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, final

import aiosqlite

from crawler.bulk import select_in
from crawler.errors import SkipReason
from crawler.links import host_of
from crawler.records import Candidate, Skipped
from crawler.settings import Settings
from crawler.stats import Stats

__all__ = ["Budgets"]


@final
class Budgets:
    """One run's page budgets and its count of admitted requests."""

    def __init__(self, conn: aiosqlite.Connection, *, run_id: int, settings: Settings) -> None:
        self._conn = conn
        self._run_id = run_id
        self._max_pages = settings.max_pages
        self._per_host = settings.max_pages_per_host
        self._admitted = 0
        """Requests admitted in the file (not skipped); kept only with `max_pages`."""
        self._admitted_by_host: Counter[str] = Counter()
        """The same per host; kept only with `max_pages_per_host`."""

    @property
    def active(self) -> bool:
        """Whether a budget applies (then a batch's admission queries the table)."""
        return bool(self._max_pages or self._per_host)

    async def load(self) -> None:
        """Read the counts a resumed crawl continues from, and reopen the requests earlier
        runs skipped for their budgets, as far as this run's budgets have room."""
        if self._max_pages:  # a scan of the whole table: only when it is needed
            self._admitted = await self._count(
                "SELECT count(*) FROM requests WHERE state != 'skipped'"
            )
        if self._per_host:
            async with self._conn.execute(
                "SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host"
            ) as cursor:
                self._admitted_by_host.update({str(h): int(n) for h, n in await cursor.fetchall()})
        await self._reopen_budget_skips()

    async def admit(
        self, candidates: list[Candidate], now: str, tally: Stats
    ) -> tuple[list[tuple[object, ...]], list[Skipped]]:
        """Return the `requests` rows to insert for `candidates` (`INSERT OR IGNORE`: the
        unique index still drops what the table holds) and the candidates over budget;
        duplicates are counted in `tally`. Call it inside the write transaction."""
        unique: dict[int, Candidate] = {}
        for candidate in candidates:
            if candidate.fingerprint in unique:
                tally.skipped[SkipReason.DUPLICATE.value] += 1
            else:
                unique[candidate.fingerprint] = candidate
        # Budgets need to know which candidates are new before inserting; otherwise the
        # unique index sorts them out during the insert (one index lookup instead of two).
        existing = await self._existing(list(unique)) if self.active else set()
        tally.skipped[SkipReason.DUPLICATE.value] += len(existing)
        if self._max_pages and unique:
            # Other processes may share this file (--processes): count inside the
            # transaction, so the budget holds for all of them together.
            self._admitted = await self._count(
                "SELECT count(*) FROM requests WHERE state != 'skipped'"
            )
        rows: list[tuple[object, ...]] = []
        over_budget: list[Skipped] = []
        for fp, c in unique.items():
            if fp in existing:
                continue
            if (reason := self._over_budget(c.host)) is not None:
                over_budget.append(
                    Skipped(
                        url=c.url,
                        fingerprint=fp,
                        host=c.host,
                        reason=reason,
                        depth=c.request.depth,
                        parent_id=c.parent_id,
                    )
                )
                continue
            self._admitted += 1
            if self._per_host:
                self._admitted_by_host[c.host] += 1
            r = c.request
            rows.append(
                (
                    c.url,
                    fp,
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
            )
        return rows, over_budget

    def counts(self) -> tuple[int, Counter[str]]:
        """The admitted counts, to `restore` if the transaction that changed them fails."""
        return self._admitted, self._admitted_by_host.copy()

    def restore(self, counts: tuple[int, Counter[str]]) -> None:
        """Go back to counts taken with `counts()` (the transaction was rolled back)."""
        self._admitted, self._admitted_by_host = counts[0], counts[1].copy()

    def already_known(self, count: int) -> None:
        """`count` of the rows `admit` returned were in the table already (the insert
        ignored them): they do not use the budget."""
        self._admitted -= count

    def never_fetched(self, url: str) -> None:
        """An admitted request was skipped after all (robots.txt, learnt when it was claimed):
        it does not use the budgets."""
        self._admitted -= 1
        if self._per_host:
            self._admitted_by_host[host_of(url)] -= 1

    def _over_budget(self, host: str) -> SkipReason | None:
        if self._max_pages and self._admitted >= self._max_pages:
            return SkipReason.MAX_PAGES
        if self._per_host and self._admitted_by_host[host] >= self._per_host:
            return SkipReason.MAX_PAGES_PER_HOST
        return None

    async def _reopen_budget_skips(self) -> None:
        """Put rows skipped for `max_pages` or `max_pages_per_host` back to pending, oldest
        first, as far as this run's budgets have room (each host's, with a per-host budget)."""
        max_pages, per_host = self._max_pages, self._per_host
        room = max(0, max_pages - self._admitted) if max_pages else -1  # -1: no limit
        hosts: list[str | None] = [None]  # None: every host at once, without a per-host budget
        if per_host:
            async with self._conn.execute(_BUDGET_SKIPPED_HOSTS) as cursor:
                hosts = [str(row[0]) for row in await cursor.fetchall()]
        for host in hosts:
            limit = room
            if host is not None:
                host_room = max(0, per_host - self._admitted_by_host[host])
                limit = host_room if room < 0 else min(room, host_room)
            cursor = await self._conn.execute(_REOPEN_BUDGET_SKIPS, (host, limit))
            self._admitted += cursor.rowcount
            if host is not None:
                self._admitted_by_host[host] += cursor.rowcount
            if room >= 0:
                room -= cursor.rowcount

    async def _existing(self, fingerprints: list[int]) -> set[int]:
        sql = "SELECT fingerprint FROM requests WHERE fingerprint IN ({marks})"
        return {int(row[0]) for row in await select_in(self._conn, sql, fingerprints)}

    async def _count(self, sql: str) -> int:
        async with self._conn.execute(sql) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0


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
