"""The single writer: every write to the crawl database goes through one task, in batches.

Workers hand `PageResult`s to `Storage.submit`; the writer task drains its inbox and commits
many results per `BEGIN IMMEDIATE … COMMIT`. Each result's page, items, links, errors, newly
discovered requests and the request's final state are in the same transaction, so a crash
never leaves a page marked done whose links were lost. A batch is usually a single call to
aiosqlite's thread (see `crawler.store.bulk`; the statements are in
`crawler.store.statements`, their rows are built in `crawler.store.rows`); a batch the
database refuses is split to find the refused row (`crawler.store.refusals`). Claims of
pending requests (`crawler.store.claims`) also go through the writer, between batches, and
so do the page budgets (`crawler.store.budgets`), counted inside each transaction, the
time series of the crawl (`crawler.store.samples`): a sample that falls due rides in the
next batch, or is written alone when the writer is idle for a whole `stats_interval`, and
the merges of the fingerprint set (`crawler.store.fingerprints`), at the end of the batch
after the one that found them due.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import final

import aiosqlite

from crawler.errors import StorageError
from crawler.fetch.politeness import Hosts
from crawler.records import PageResult, utc_now
from crawler.settings import Settings
from crawler.stats import Stats
from crawler.store import statements
from crawler.store.batches import BatchWriter
from crawler.store.budgets import Budgets
from crawler.store.bulk import Script
from crawler.store.claims import Claims
from crawler.store.fingerprints import merges_due
from crawler.store.history import retire_items
from crawler.store.item_tables import ItemTables
from crawler.store.refresh import has_pages
from crawler.store.rows import (
    Batch,
    Seeds,
    add_result_rows,
    replaced_pages,
    stored_item_keys,
)
from crawler.store.samples import Sample, Sampler
from crawler.store.schema import rollback

__all__ = ["BatchWriter", "Seeds", "Storage"]  # BatchWriter: crawler.store.batches


@final
class Storage(BatchWriter):
    """Owns the write connection and the writer task of one crawl run on an SQLite file.

    Create it with an open connection and a run id, call `load_counts()`, run
    `run_writer()` as a task and end it with `stop_writer()`; the crawl (crawler.engine.crawl)
    then releases the run's leases and closes the file.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        run_id: int,
        settings: Settings,
        stats: Stats,
        on_committed: Callable[[int], None],
        on_hosts_saved: Callable[[list[str]], None] | None = None,
        hosts: Hosts | None = None,
    ) -> None:
        """`hosts`, the crawl's politeness state, is read by the `host_stats` snapshot."""
        claims = Claims(conn, run_id=run_id, settings=settings)
        super().__init__(
            run_id=run_id,
            settings=settings,
            stats=stats,
            on_committed=on_committed,
            claims=claims,
            on_hosts_saved=on_hosts_saved,
        )
        self._conn = conn
        self._sqlite_claims = claims
        self._budgets = Budgets(conn, run_id=run_id, settings=settings)
        self._item_tables = ItemTables()
        self._stored_keys = functools.partial(stored_item_keys, conn)
        self._samples = Sampler(
            run_id=run_id, stats=stats, interval=settings.stats_interval, hosts=hosts
        )
        self._sampler = self._samples
        self._merges: tuple[str, ...] = ()
        """What the next batch runs last to merge levels of the fingerprint set (checked
        after each batch: crawler.store.fingerprints)."""

    async def _write_alone(self, sample: Sample) -> None:
        try:
            await sample.script.run_as_transaction(self._conn)
        except sqlite3.Error as exc:
            await rollback(self._conn)
            raise StorageError(f"database write failed: {exc}") from exc

    async def load_counts(self) -> None:
        """Read what a resumed crawl continues from: the budgets' counts (reopening what
        earlier runs skipped for theirs), the claim order's index, the pending count."""
        await self._budgets.load()
        await self._sqlite_claims.prepare()
        self._sqlite_claims.refetches = await has_pages(self._conn)
        self._merges = await merges_due(self._conn)
        async with self._conn.execute(
            "SELECT count(*) FROM requests WHERE state = 'pending'"
        ) as cursor:
            row = await cursor.fetchone()
        self._stats.pending = int(row[0]) if row else 0

    async def _merges_due(self) -> tuple[str, ...]:
        """`merges_due`, after a batch committed: a read that fails must not fail the batch
        (the writer would write it again); the next write will meet the same trouble."""
        try:
            return await merges_due(self._conn)
        except sqlite3.Error:
            return ()

    def _forget_item_tables(self) -> None:
        self._item_tables = ItemTables()  # it may know of tables the rollback removed

    async def _commit(self, writes: Sequence[PageResult | Seeds]) -> None:
        """Write a batch in one transaction. Usually that is one call to the database thread
        (see `crawler.store.bulk`); budgets, item keys, stored bodies and new item types need
        queries or parameters in between, and take one call per statement instead.
        The counters change only once the transaction is committed."""
        conn = self._conn
        now = utc_now()
        tally = Stats()
        batch = Batch.of(writes)
        results = batch.results
        replaced = replaced_pages(results)
        item_inserts = None if replaced else self._one_call_item_inserts(results)
        if item_inserts is None:
            await conn.execute("BEGIN IMMEDIATE")
        try:
            await retire_items(conn, replaced, run_id=self._run_id, now=now)
            new_rows, budget_skips = await self._budgets.admit(batch.candidates, now, tally)
            rest = Script()
            rest.add(
                statements.SET_LASTMOD,
                batch.lastmods(),
            )
            batch.add_refused(self._run_id, budget_skips, now, rest)
            await add_result_rows(self._stored_keys, self._run_id, results, now, rest, tally)
            batch.add_seed_errors(self._run_id, rest, tally)
            if (sample := self._samples.take(tally)) is not None:
                rest.extend(sample.script)
            admitted = await self._run_batch(new_rows, rest, item_inserts, results)
        except BaseException:
            await rollback(conn)
            raise
        batch.count_admission(
            tally, inserted=len(new_rows), admitted=admitted, budget_skips=budget_skips
        )
        self._stats.absorb(tally)
        if sample is not None:
            self._samples.written(sample)
        self._merges = await self._merges_due()

    async def _run_batch(
        self,
        new_rows: list[tuple[object, ...]],
        rest: Script,
        item_inserts: list[str] | None,
        results: list[PageResult],
    ) -> int:
        """Insert the batch's new requests, then run `rest`, and commit: in one call when
        `item_inserts` (see `_one_call_item_inserts`) is not None, else in the transaction
        `_commit` began. Return how many of the new requests it admitted (new or reopened:
        the others the table already had)."""
        conn = self._conn
        # The insert's trigger drops what the table already has (Budgets.admit may not have
        # looked; another process may also have added it just now), but for a URL refused
        # for depth, which it makes pending again: the rows admitted are what the counter
        # of admitted requests gained.
        if item_inserts is not None:
            script = Script()
            if new_rows:
                script.add_sql(statements.CREATE_ADMITTED_COUNT)
                script.add_sql(statements.COUNT_ADMITTED_BEFORE)
                script.add(statements.INSERT_REQUEST, new_rows)
                script.add_sql(statements.COUNT_ADMITTED_AFTER)
            script.extend(rest)
            for sql in item_inserts:
                script.add_sql(sql)
            for sql in self._merges:
                script.add_sql(sql)
            await script.run_as_transaction(conn)
            admitted = await self._admitted_in_last_batch() if new_rows else 0
        else:
            admitted = 0
            if new_rows:
                before = await self._budgets.admitted()
                await statements.INSERT_REQUEST.run(conn, new_rows)
                admitted = await self._budgets.admitted() - before
            await rest.run_each(conn)
            await self._write_after_script(results)
            for sql in self._merges:
                await conn.execute(sql)
            await conn.execute("COMMIT")
        return admitted

    def _one_call_item_inserts(self, results: list[PageResult]) -> list[str] | None:
        """The typed-table inserts of a batch that can be written in one call, else None."""
        if not results:
            return None  # start requests: large and rare, plain parameters are cheaper
        if self._budgets.active:
            return None  # the budgets count inside the transaction
        for result in results:
            if result.item_keys or (result.page is not None and result.page.body is not None):
                return None  # stored keys are looked up; bodies are BLOB parameters
        return self._item_tables.ready_inserts(results)

    async def _admitted_in_last_batch(self) -> int:
        """How many requests the last one-call batch admitted (as `COUNT_ADMITTED_BEFORE`
        and `COUNT_ADMITTED_AFTER` noted)."""
        async with self._conn.execute(statements.TAKE_ADMITTED_COUNT) as cursor:
            return sum(int(row[0]) for row in await cursor.fetchall())

    async def _write_after_script(self, results: list[PageResult]) -> None:
        """What needs the script's rows in place: page bodies (BLOBs cannot travel in JSON)
        and the typed item tables and views, filled from `items`."""
        bodies = [
            (result.page.body, result.request_id)
            for result in results
            if result.page is not None and result.page.body is not None
        ]
        if bodies:
            await self._conn.executemany(statements.SET_PAGE_BODY, bodies)
        if results:
            await self._item_tables.write(self._conn, results)
