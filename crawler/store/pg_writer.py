"""The writer of a run on PostgreSQL: the same batches as on SQLite (crawler.store.writer; the
rows are built by crawler.store.rows), each committed in one transaction of multi-row
statements (crawler.store.pg_statements) through the run's `PgLink`, which reconnects and
retries when the server goes away.

The page budgets hold for every worker of the crawl: with a budget, a batch locks the
counters it reads (`frontier_counts`, the batch's `hosts` rows, in host order) until it
commits, so two workers cannot both spend the last page. What a result teaches about its
host goes to its `hosts` row in the same transaction (crawler.store.rows, `UPSERT_HOST`): a
cool-down after a 429 or 503 (`not_before`), the throttle's concurrency and Crawl-delay,
which every worker's claims honour. A batch that admits new requests announces them to
the workers waiting for work (crawler.store.pg_listen).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final, final

import asyncpg

from crawler.records import ItemKey, PageResult, utc_now
from crawler.settings import Settings
from crawler.stats import Stats
from crawler.store import pg_statements, statements
from crawler.store.budgets import Budgets
from crawler.store.bulk import Script
from crawler.store.pg_claims import PgClaims
from crawler.store.pg_items import PgItemTables
from crawler.store.pg_link import PgLink
from crawler.store.pg_listen import NOTIFY
from crawler.store.pg_pending import pending_count
from crawler.store.pg_refresh import pg_has_pages, pg_retire_items
from crawler.store.rows import Batch, Seeds, add_result_rows, replaced_pages
from crawler.store.writer import BatchWriter

__all__ = ["PgStorage"]


class _PgBudgets(Budgets):
    """The page budgets, counted in PostgreSQL under row locks (see the module docstring)."""

    def __init__(self, *, run_id: int, settings: Settings) -> None:
        self._run_id = run_id
        self._max_pages = settings.max_pages
        self._settings = settings
        self._per_host = bool(settings.max_pages_per_host) or settings.sets_per_host(
            "max_pages_per_host"
        )
        self._pg: asyncpg.Connection | None = None

    def bind(self, conn: asyncpg.Connection) -> None:
        """Read through `conn` (the transaction in progress)."""
        self._pg = conn

    @property
    def _db(self) -> asyncpg.Connection:
        assert self._pg is not None, "bind() first"
        return self._pg

    async def _existing(self, fingerprints: list[int]) -> set[int]:
        rows = await self._db.fetch(
            "SELECT fingerprint FROM requests WHERE fingerprint = ANY($1::bigint[]) "
            "AND NOT (state = 'skipped' AND reason = 'depth')",
            fingerprints,
        )
        return {int(row[0]) for row in rows}

    async def admitted(self) -> int:
        value = await self._db.fetchval("SELECT admitted FROM frontier_counts FOR UPDATE")
        return int(value or 0)

    async def _admitted_by_host(self, hosts: set[str]) -> Counter[str]:
        ordered = sorted(hosts)
        await self._db.execute(
            "INSERT INTO hosts (host, admitted) SELECT unnest($1::text[]), 0 "
            "ON CONFLICT DO NOTHING",
            ordered,
        )
        rows = await self._db.fetch(
            "SELECT host, admitted FROM hosts WHERE host = ANY($1::text[]) "
            "ORDER BY host FOR UPDATE",
            ordered,
        )
        return Counter({str(host): int(n) for host, n in rows})

    async def _budget_skipped_hosts(self) -> list[str]:
        rows = await self._db.fetch(f"SELECT DISTINCT host FROM requests WHERE {_SKIPPED}")
        return [str(row[0]) for row in rows]

    async def _reopen(self, host: str | None, limit: int) -> int:
        status = await self._db.execute(_REOPEN, host, None if limit < 0 else limit)
        return int(status.rsplit(" ", 1)[-1])


_SKIPPED: Final = "state = 'skipped' AND reason IN ('max_pages', 'max_pages_per_host')"
_REOPEN: Final = (
    "UPDATE requests SET state = 'pending', reason = NULL, finished_at = NULL "
    f"WHERE id IN (SELECT id FROM requests WHERE {_SKIPPED} "
    "AND host = coalesce($1, host) ORDER BY id LIMIT $2)"
)


@final
class PgStorage(BatchWriter):
    """The writer task of one run on a PostgreSQL crawl database."""

    def __init__(
        self,
        link: PgLink,
        *,
        run_id: int,
        settings: Settings,
        stats: Stats,
        on_committed: Callable[[int], None],
        on_hosts_saved: Callable[[list[str]], None] | None = None,
    ) -> None:
        claims = PgClaims(link, run_id=run_id, settings=settings)
        super().__init__(
            run_id=run_id,
            settings=settings,
            stats=stats,
            on_committed=on_committed,
            claims=claims,
            on_hosts_saved=on_hosts_saved,
        )
        self._pg_claims = claims
        self._link = link
        self._budgets = _PgBudgets(run_id=run_id, settings=settings)
        self._item_tables = PgItemTables()

    async def load_counts(self) -> None:
        """Reopen what earlier runs skipped for their budgets; read the number of pending
        requests (a few rows that triggers keep: crawler.store.pg_pending)."""

        async def load(conn: asyncpg.Connection) -> int:
            self._budgets.bind(conn)
            await self._budgets.load()
            self._pg_claims.refetches = await pg_has_pages(conn)
            return await pending_count(conn)

        self._stats.pending = await self._link.transaction(load)

    def _forget_item_tables(self) -> None:
        self._item_tables = PgItemTables()

    async def _commit(self, writes: Sequence[PageResult | Seeds]) -> None:
        """Write a batch in one transaction (again, whole, if the connection was lost)."""
        results = [m for m in writes if isinstance(m, PageResult)]
        kept = [(r, r.items, r.item_keys) for r in results]

        async def attempt(conn: asyncpg.Connection) -> Stats:
            for result, items, keys in kept:  # a retry starts from the batch as it came
                result.items, result.item_keys = items, keys
            return await self._write(conn, writes, results)

        self._stats.absorb(await self._link.transaction(attempt))

    async def _write(
        self,
        conn: asyncpg.Connection,
        writes: Sequence[PageResult | Seeds],
        results: list[PageResult],
    ) -> Stats:
        now = utc_now()
        tally = Stats()
        batch = Batch.of(writes)
        await pg_retire_items(conn, replaced_pages(results), run_id=self._run_id, now=now)
        self._budgets.bind(conn)
        new_rows, budget_skips = await self._budgets.admit(batch.candidates, now, tally)
        script = Script()
        batch.add_refused(self._run_id, budget_skips, now, script)

        async def stored_keys(keys: list[ItemKey]) -> set[tuple[str, int]]:
            return await _stored_item_keys(conn, keys)

        await add_result_rows(stored_keys, self._run_id, results, now, script, tally)
        batch.add_seed_errors(self._run_id, script, tally)
        await pg_statements.run_script(conn, script)
        await self._write_bodies(conn, results)
        if results:
            await self._item_tables.write(conn, results)
        # Last: the insert locks the crawl's counters (its trigger) until the commit.
        admitted = await pg_statements.INSERT_REQUEST.run(conn, new_rows)
        if admitted:
            await conn.execute(NOTIFY)  # workers waiting for work are woken at the commit
        await pg_statements.pg_statement(statements.SET_LASTMOD).run(conn, batch.lastmods())
        batch.count_admission(
            tally, inserted=len(new_rows), admitted=admitted, budget_skips=budget_skips
        )
        return tally

    async def _write_bodies(self, conn: asyncpg.Connection, results: list[PageResult]) -> None:
        bodies = [
            (result.page.body, result.request_id)
            for result in results
            if result.page is not None and result.page.body is not None
        ]
        if bodies:
            await conn.execute(
                "UPDATE pages SET body = u.body FROM unnest($1::bytea[], $2::bigint[]) "
                "AS u(body, request_id) WHERE pages.request_id = u.request_id",
                [b for b, _ in bodies],
                [r for _, r in bodies],
            )


async def _stored_item_keys(conn: asyncpg.Connection, keys: list[ItemKey]) -> set[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT type, key_hash FROM item_keys "
        "WHERE (type, key_hash) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))",
        [k.type for k in keys],
        [k.key_hash for k in keys],
    )
    return {(str(t), int(h)) for t, h in rows}
