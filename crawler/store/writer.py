"""The single writer: every write to the crawl database goes through one task, in batches.

Workers hand `PageResult`s to `Storage.submit`; the writer task drains its inbox and commits
many results per `BEGIN IMMEDIATE … COMMIT`. Each result's page, items, links, errors, newly
discovered requests and the request's final state are in the same transaction, so a crash
never leaves a page marked done whose links were lost. A batch is usually a single call to
aiosqlite's thread (see `crawler.store.bulk`; the statements are in
`crawler.store.statements`, their rows are built in `crawler.store.rows`); a batch the
database refuses is split to find the refused row (`crawler.store.refusals`). Claims of
pending requests (`crawler.store.claims`) also go through the writer, between batches, and
so do the page budgets (`crawler.store.budgets`), counted inside each transaction, and the
time series of the crawl (`crawler.store.samples`): a sample that falls due rides in the
next batch, or is written alone when the writer is idle for a whole `stats_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

import aiosqlite

from crawler.errors import SkipReason, StorageError
from crawler.fetch.politeness import Hosts
from crawler.records import Candidate, PageResult, Skipped, utc_now
from crawler.settings import Settings
from crawler.stats import Stats
from crawler.store import statements
from crawler.store.budgets import Budgets
from crawler.store.bulk import Script
from crawler.store.claims import ClaimBatch, Claims
from crawler.store.history import retire_items
from crawler.store.item_tables import ItemTables
from crawler.store.refresh import has_pages
from crawler.store.refusals import commit_or_split
from crawler.store.rows import Seeds, add_result_rows, add_skipped_rows, replaced_pages
from crawler.store.samples import Sampler
from crawler.store.schema import rollback
from crawler.store.statements import error_row

__all__ = ["Seeds", "Storage"]


@dataclass(slots=True)
class _ClaimOrder:
    limit: int
    reply: asyncio.Future[ClaimBatch]
    held: Mapping[str, int]
    per_host: int
    known: Callable[[str], bool] | None


@dataclass(slots=True)
class _Flush:
    """Commit the batch being gathered now (the feeder has nothing left to hand out)."""


_Message = PageResult | Seeds | _ClaimOrder | _Flush


@final
class Storage:
    """Owns the write connection and the writer task of one crawl run.

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
        hosts: Hosts | None = None,
    ) -> None:
        """`on_committed` is told how many results each commit wrote. `hosts`, the crawl's
        politeness state (crawler.fetch.politeness), is told the host of each host snapshot
        written (`Hosts.saved`) and read by the `host_stats` snapshot."""
        self._conn = conn
        self._run_id = run_id
        self._settings = settings
        self._stats = stats
        self._on_committed = on_committed
        self._hosts = hosts
        self._inbox: asyncio.Queue[_Message | None] = asyncio.Queue(
            maxsize=settings.write_batch_size * 4
        )
        self._budgets = Budgets(conn, run_id=run_id, settings=settings)
        self._claims = Claims(conn, run_id=run_id, settings=settings)
        self._item_tables = ItemTables()
        self._sampler = Sampler(
            run_id=run_id, stats=stats, interval=settings.stats_interval, hosts=hosts
        )

    async def load_counts(self) -> None:
        """Read what a resumed crawl continues from: the budgets' counts (reopening what
        earlier runs skipped for theirs), the claim order's index, the pending count."""
        await self._budgets.load()
        await self._claims.prepare()
        self._claims.refetches = await has_pages(self._conn)
        async with self._conn.execute(
            "SELECT count(*) FROM requests WHERE state = 'pending'"
        ) as cursor:
            row = await cursor.fetchone()
        self._stats.pending = int(row[0]) if row else 0

    async def submit(self, message: PageResult | Seeds) -> None:
        """Queue a result for the next transaction (waits when the writer is far behind)."""
        await self._inbox.put(message)

    async def submit_and_wait(self, seeds: Seeds) -> None:
        """Queue discovered requests and wait until they are committed.

        Used for large volumes (start requests, a callback yielding very many requests) so
        that at most one batch of them is held in memory at a time.
        """
        await (await self.submit_for_commit(seeds))

    async def submit_for_commit(self, seeds: Seeds) -> asyncio.Future[None]:
        """Queue discovered requests; return a future resolved once they are committed.

        Lets a producer prepare its next batch while the writer commits this one (SQLite
        releases the GIL while it writes), keeping at most two batches in memory.
        """
        seeds.committed = asyncio.get_running_loop().create_future()
        await self._inbox.put(seeds)
        return seeds.committed

    def hurry(self) -> None:
        """Commit what the writer is gathering without waiting for `write_interval`: workers
        are idle until the requests it holds become claimable."""
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(_Flush())

    async def claim(
        self,
        limit: int,
        *,
        held: Mapping[str, int] | None = None,
        per_host: int = 0,
        known: Callable[[str], bool] | None = None,
    ) -> ClaimBatch:
        """Lease up to `limit` due pending requests to this run.

        Hosts take turns (round-robin over the hosts with pending requests, continuing after
        the host the previous claim ended with), each host's requests highest priority
        first. With `per_host`, a host that already has `held[host]` requests in memory gets
        at most `per_host - held[host]` more, so one host cannot fill the feeder's window.
        With `known`, the batch also carries the stored state and robots.txt answers of the
        claimed hosts not `known` (in memory).
        """
        reply: asyncio.Future[ClaimBatch] = asyncio.get_running_loop().create_future()
        await self._inbox.put(_ClaimOrder(limit, reply, held or {}, per_host, known))
        return await reply

    async def stop_writer(self) -> None:
        """Ask the writer task to commit what it holds and return."""
        await self._inbox.put(None)

    async def run_writer(self) -> None:
        """Commit queued results in batches until `stop_writer()` is called.

        A batch is closed when it holds `write_batch_size` messages, when `write_interval`
        has passed since its first message, or at once when someone waits for it (a claim,
        or requests handed over with `submit_and_wait`): few, large transactions.
        """
        stopping = False
        while not stopping:
            first = await self._next_message()
            if first is None:
                break
            messages: list[_Message] = [first]
            stopping = await self._gather(messages)
            await self._process(messages)
        await self._write_sample(force=True)  # the run's last counts

    async def _next_message(self) -> _Message | None:
        """The next message; while none comes, a sample that falls due is written alone."""
        while True:
            wait = self._sampler.wait()
            if wait is None or not self._inbox.empty():
                return await self._inbox.get()
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        return await self._inbox.get()
                except TimeoutError:
                    pass
            await self._write_sample()

    async def _write_sample(self, *, force: bool = False) -> None:
        """Write a due sample (any time with `force`) in a transaction of its own."""
        sample = self._sampler.take(force=force)
        if sample is None:
            return
        try:
            await sample.script.run_as_transaction(self._conn)
        except sqlite3.Error as exc:
            await rollback(self._conn)
            raise StorageError(f"database write failed: {exc}") from exc
        self._sampler.written(sample)

    async def _gather(self, messages: list[_Message]) -> bool:
        """Add queued messages to the batch; return True when the stop sentinel came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.write_interval
        while len(messages) < self._settings.write_batch_size and not _is_awaited(messages[-1]):
            if self._inbox.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        message = await self._inbox.get()
                except TimeoutError:
                    break
            else:
                message = self._inbox.get_nowait()
            if message is None:
                return True
            messages.append(message)
        return False

    async def _process(self, messages: list[_Message]) -> None:
        writes = [m for m in messages if isinstance(m, PageResult | Seeds)]
        orders = [m for m in messages if isinstance(m, _ClaimOrder)]
        try:
            if writes:
                await commit_or_split(writes, self._commit_restoring)
            for order in orders:
                if not order.reply.done():
                    batch = await self._claims.claim(
                        order.limit, order.held, order.per_host, order.known
                    )
                    order.reply.set_result(batch)
            await self._claims.renew_leases_if_due()
        except (sqlite3.Error, StorageError) as exc:
            failure = (
                exc
                if isinstance(exc, StorageError)
                else StorageError(f"database write failed: {exc}")
            )
            waiters: list[asyncio.Future[Any]] = [o.reply for o in orders]
            for waiter in waiters + _commit_waiters(writes):
                if not waiter.done():
                    waiter.set_exception(failure)
            raise failure from exc
        for waiter in _commit_waiters(writes):
            if not waiter.done():
                waiter.set_result(None)
        if writes:
            results = [m for m in writes if isinstance(m, PageResult)]
            self._sampler.observe(results)
            self._on_committed(len(results))
            if self._hosts is not None:
                self._hosts.saved([m.host.host for m in results if m.host])

    async def _commit_restoring(self, writes: Sequence[PageResult | Seeds]) -> None:
        """`_commit`, leaving the writer's state as it was if the transaction fails."""
        results = [(m, m.items, m.item_keys) for m in writes if isinstance(m, PageResult)]
        try:
            await self._commit(writes)
        except BaseException:
            for result, items, keys in results:
                result.items, result.item_keys = items, keys
            self._item_tables = ItemTables()  # it may know of tables the rollback removed
            raise

    async def _commit(self, writes: Sequence[PageResult | Seeds]) -> None:
        """Write a batch in one transaction. Usually that is one call to the database thread
        (see `crawler.store.bulk`); budgets, item keys, stored bodies and new item types need
        queries or parameters in between, and take one call per statement instead.
        The counters change only once the transaction is committed."""
        conn = self._conn
        now = utc_now()
        tally = Stats()
        candidates: list[Candidate] = []
        skipped: list[Skipped] = []
        for message in writes:
            candidates.extend(message.candidates)
            skipped.extend(message.skipped)
        results = [m for m in writes if isinstance(m, PageResult)]
        seed_errors = [e for m in writes if isinstance(m, Seeds) for e in m.errors]
        replaced = replaced_pages(results)
        item_inserts = None if replaced else self._one_call_item_inserts(results)
        if item_inserts is None:
            await conn.execute("BEGIN IMMEDIATE")
        try:
            await retire_items(conn, replaced, run_id=self._run_id, now=now)
            new_rows, budget_skips = await self._budgets.admit(candidates, now, tally)
            rest = Script()
            rest.add(
                statements.SET_LASTMOD,
                [(c.fingerprint, c.lastmod) for c in candidates if c.lastmod],
            )
            add_skipped_rows(self._run_id, skipped, now, rest)
            rest.add(statements.INSERT_REQUEST_SKIPPED, budget_skips)
            await add_result_rows(conn, self._run_id, results, now, rest, tally)
            rest.add(
                statements.INSERT_ERROR, [error_row(self._run_id, None, e) for e in seed_errors]
            )
            for error in seed_errors:
                tally.errors[error.kind] += 1
            if (sample := self._sampler.take(tally)) is not None:
                rest.extend(sample.script)
            already_known = await self._run_batch(new_rows, rest, item_inserts, results)
        except BaseException:
            await rollback(conn)
            raise
        tally.admitted += len(new_rows) - already_known
        tally.pending += len(new_rows) - already_known
        tally.skipped[SkipReason.DUPLICATE.value] += already_known
        for skip in skipped:
            tally.skipped[skip.reason.value] += 1
        for row in budget_skips:
            tally.skipped[str(row[12])] += 1  # its reason
        self._stats.absorb(tally)
        if sample is not None:
            self._sampler.written(sample)

    async def _run_batch(
        self,
        new_rows: list[tuple[object, ...]],
        rest: Script,
        item_inserts: list[str] | None,
        results: list[PageResult],
    ) -> int:
        """Insert the batch's new requests, then run `rest`, and commit: in one call when
        `item_inserts` (see `_one_call_item_inserts`) is not None, else in the transaction
        `_commit` began. Return how many of the new requests the table already had."""
        conn = self._conn
        # The insert drops what the table already has (with no budget to apply,
        # Budgets.admit did not look; another process may also have added it just now)
        if item_inserts is not None:
            script = Script()
            if new_rows:
                script.add_sql(statements.CREATE_ADMITTED_COUNT)
                script.add(statements.INSERT_REQUEST, new_rows)
                script.add_sql(statements.COUNT_ADMITTED)
            script.extend(rest)
            for sql in item_inserts:
                script.add_sql(sql)
            await script.run_as_transaction(conn)
            admitted = await self._admitted_in_last_batch() if new_rows else 0
        else:
            admitted = await statements.INSERT_REQUEST.run(conn, new_rows)
            await rest.run_each(conn)
            await self._write_after_script(results)
            await conn.execute("COMMIT")
        return len(new_rows) - admitted

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
        """How many requests the last one-call batch inserted (as `COUNT_ADMITTED` noted)."""
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


def _is_awaited(message: _Message) -> bool:
    """Whether a coroutine waits for this message to be processed."""
    return isinstance(message, _ClaimOrder | _Flush) or (
        isinstance(message, Seeds) and message.committed is not None
    )


def _commit_waiters(writes: Sequence[PageResult | Seeds]) -> list[asyncio.Future[None]]:
    return [m.committed for m in writes if isinstance(m, Seeds) and m.committed is not None]
