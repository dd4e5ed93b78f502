"""The single writer: every write to the crawl database goes through one task, in batches.

Workers hand `PageResult`s to `Storage.submit`; the writer task drains its inbox and commits
many results per `BEGIN IMMEDIATE … COMMIT`. Each result's page, items, links, errors, newly
discovered requests and the request's final state are in the same transaction, so a crash
never leaves a page marked done whose links were lost. A batch is usually a single call to
aiosqlite's thread (see `crawler.store.bulk`; the statements are in
`crawler.store.statements`). Claims of pending requests (`crawler.store.claims`) also go
through the writer, between batches, and so do the page budgets (`crawler.store.budgets`),
counted inside each transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, final

import aiosqlite

from crawler.errors import SkipReason, StorageError
from crawler.failures import describe, internal_error, internal_failure, storable
from crawler.records import (
    Candidate,
    Claimed,
    DropReason,
    ErrorRecord,
    ItemKey,
    PageResult,
    RequestState,
    Skipped,
    utc_now,
)
from crawler.settings import Settings
from crawler.spider.http import Request
from crawler.stats import Stats
from crawler.store import statements
from crawler.store.budgets import Budgets
from crawler.store.bulk import Script, select_in
from crawler.store.claims import ClaimBatch, Claims
from crawler.store.item_tables import ItemTables
from crawler.store.schema import rollback
from crawler.store.statements import error_row, skipped_row

__all__ = ["Seeds", "Storage"]

logger = logging.getLogger(__name__)


@final
@dataclass(slots=True, kw_only=True)
class Seeds:
    """Start requests (and refused start URLs) to add to the frontier."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    """Start requests that were wrong (unknown callback, bad meta)."""
    committed: asyncio.Future[None] | None = None
    """Resolved once these rows are committed (see `Storage.submit_and_wait`)."""


@dataclass(slots=True)
class _ClaimOrder:
    limit: int
    reply: asyncio.Future[ClaimBatch]
    held: Mapping[str, int]
    per_host: int


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
    ) -> None:
        self._conn = conn
        self._run_id = run_id
        self._settings = settings
        self._stats = stats
        self._on_committed = on_committed
        self._inbox: asyncio.Queue[_Message | None] = asyncio.Queue(
            maxsize=settings.write_batch_size * 4
        )
        self._budgets = Budgets(conn, run_id=run_id, settings=settings)
        self._claims = Claims(conn, run_id=run_id, settings=settings)
        self._item_tables = ItemTables()

    async def load_counts(self) -> None:
        """Read what a resumed crawl continues from: the budgets' counts (reopening what
        earlier runs skipped for theirs), the claim order's index, the pending count."""
        await self._budgets.load()
        await self._claims.prepare()
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
        self, limit: int, *, held: Mapping[str, int] | None = None, per_host: int = 0
    ) -> ClaimBatch:
        """Lease up to `limit` due pending requests to this run.

        Hosts take turns (round-robin over the hosts with pending requests, continuing after
        the host the previous claim ended with), each host's requests highest priority
        first. With `per_host`, a host that already has `held[host]` requests in memory gets
        at most `per_host - held[host]` more, so one host cannot fill the feeder's window.
        """
        reply: asyncio.Future[ClaimBatch] = asyncio.get_running_loop().create_future()
        await self._inbox.put(_ClaimOrder(limit, reply, held or {}, per_host))
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
            first = await self._inbox.get()
            if first is None:
                break
            messages: list[_Message] = [first]
            stopping = await self._gather(messages)
            await self._process(messages)

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
                await self._commit_or_split(writes)
            for order in orders:
                if not order.reply.done():
                    batch = await self._claims.claim(order.limit, order.held, order.per_host)
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
            self._on_committed(sum(1 for m in writes if isinstance(m, PageResult)))

    async def _commit_or_split(self, writes: Sequence[PageResult | Seeds]) -> None:
        """Commit `writes`; when their content is refused, find the refused rows by halving.

        One row that SQLite or encoding cannot take (an integer past 64 bits, text it cannot
        hold, a value our statements did not foresee) must not stop the crawl: the batch is
        split and each half committed alone, down to the one result that is refused, which
        is then recorded as its request's `internal` failure (crawler.failures). A failure
        of the database itself (disk full, read-only, locked, corrupt) is raised at once.

        Raises:
            sqlite3.Error: the database refused a write for a reason no row's content explains.
            StorageError: even the failure record of one refused result could not be written.
        """
        try:
            await self._commit_restoring(writes)
        except sqlite3.Error as exc:
            if _is_database_failure(exc):
                raise
            await self._split(writes, exc)
        except (ValueError, TypeError, OverflowError, UnicodeError, KeyError) as exc:
            await self._split(writes, exc)

    async def _split(self, writes: Sequence[PageResult | Seeds], exc: Exception) -> None:
        if len(writes) > 1:
            middle = len(writes) // 2
            await self._commit_or_split(writes[:middle])
            await self._commit_or_split(writes[middle:])
            return
        (refused,) = writes
        if isinstance(refused, Seeds) and _seed_rows(refused) > 1:
            first, second = _halves(refused)
            await self._commit_or_split([first])
            await self._commit_or_split([second])
            return
        if isinstance(refused, PageResult) and (refused.candidates or refused.skipped):
            # The refused row may be one of the requests it found: record those on their
            # own (each refused one as skipped `internal`), then the page without them.
            found = Seeds(candidates=refused.candidates, skipped=refused.skipped)
            refused.candidates, refused.skipped = [], []
            await self._commit_or_split([found])
            await self._commit_or_split([refused])
            return
        replacement = _refused_record(refused, exc)
        logger.warning(
            "the database refused the results of %s: %s (recorded as an internal error)",
            replacement.errors[0].url,
            describe(exc),
        )
        try:
            await self._commit_restoring([replacement])
        except Exception as again:
            raise StorageError(f"database write failed: {describe(again)}") from again

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
        item_inserts = self._one_call_item_inserts(results)
        if item_inserts is None:
            await conn.execute("BEGIN IMMEDIATE")
        try:
            new_rows, budget_skips = await self._budgets.admit(candidates, now, tally)
            rest = Script()
            refused = [skipped_row(self._run_id, s, now) for s in skipped]
            targets = [row for row in refused if row[4] == SkipReason.REDIRECT_TARGET.value]
            if targets:
                refused = [row for row in refused if row[4] != SkipReason.REDIRECT_TARGET.value]
                rest.add(statements.UPSERT_REDIRECT_TARGET, targets)
            rest.add(statements.INSERT_SKIPPED, refused)
            rest.add(statements.INSERT_REQUEST_SKIPPED, budget_skips)
            await self._write_results(results, now, rest, tally)
            rest.add(
                statements.INSERT_ERROR, [error_row(self._run_id, None, e) for e in seed_errors]
            )
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
                already_known = len(new_rows) - admitted
            else:
                admitted = await statements.INSERT_REQUEST.run(conn, new_rows)
                already_known = len(new_rows) - admitted
                await rest.run_each(conn)
                await self._write_after_script(results)
                await conn.execute("COMMIT")
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
        for error in seed_errors:
            tally.errors[error.kind] += 1
        self._stats.absorb(tally)

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

    async def _write_results(
        self, results: list[PageResult], now: str, script: Script, tally: Stats
    ) -> None:
        """Add the rows of a batch's results to `script` (pages, links, items, errors, request
        states, robots answers), counted in `tally`; the item checks before them may query
        the table."""
        if not results:
            return
        await self._write_item_checks(results, now, script, tally)
        pages: list[tuple[object, ...]] = []
        links: list[tuple[object, ...]] = []
        items: list[tuple[object, ...]] = []
        errors: list[tuple[object, ...]] = []
        updates: list[tuple[object, ...]] = []
        robots_rows: list[tuple[object, ...]] = []
        stats = tally
        for result in results:
            if (page := result.page) is not None:
                pages.append(
                    (
                        result.request_id,
                        self._run_id,
                        page.url,
                        page.final_url,
                        page.status,
                        page.content_type,
                        page.encoding,
                        page.size_bytes,
                        page.depth,
                        page.elapsed_ms,
                        page.fetched_at,
                    )
                )
                if result.links:
                    links.append((result.request_id, page.final_url, result.links))
                stats.pages += 1
                stats.statuses[page.status] += 1
                stats.bytes_received += page.size_bytes
            items.extend(
                (self._run_id, result.request_id, result.url, kind, data, now)
                for kind, data in result.items
            )
            for kind, _ in result.items:
                stats.items_by_type[kind] += 1
            stats.items += len(result.items)
            errors.extend(error_row(self._run_id, result.request_id, e) for e in result.errors)
            for error in result.errors:
                stats.errors[error.kind] += 1
            finished = None if result.state is RequestState.PENDING else now
            updates.append(
                (
                    result.state.value,
                    result.reason,
                    result.attempts,
                    result.not_before,
                    finished,
                    result.request_id,
                )
            )
            if result.state is RequestState.DONE:
                stats.done += 1
            elif result.state is RequestState.FAILED:
                stats.failed += 1
            elif result.state is RequestState.PENDING:
                stats.rescheduled += 1
            elif result.state is RequestState.SKIPPED:  # robots.txt, learnt after admission
                stats.skipped[result.reason or "skipped"] += 1
            if (robots := result.robots) is not None:
                robots_rows.append(
                    (
                        robots.url,
                        robots.host,
                        robots.fetched_at,
                        robots.status,
                        robots.outcome,
                        robots.crawl_delay,
                        robots.body,
                        robots.error,
                        self._run_id,
                    )
                )
            if result.state is not RequestState.PENDING:
                stats.pending -= 1
        script.add(statements.INSERT_PAGE, pages)
        script.add(statements.INSERT_LINK, links)
        script.add(statements.INSERT_ITEM, items)
        script.add(statements.INSERT_ERROR, errors)
        script.add(statements.FINISH_REQUEST, updates)
        script.add(statements.UPSERT_ROBOTS, robots_rows)

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

    async def _write_item_checks(
        self, results: list[PageResult], now: str, script: Script, tally: Stats
    ) -> None:
        """Drop items whose de-duplication key is already stored (by an earlier batch or run,
        or earlier in this batch) and store the new keys; write refused items to `item_errors`.
        Runs first, so everything after it sees only the items that are kept."""
        stats = tally
        keys = [key for result in results for key in result.item_keys.values()]
        seen = await self._stored_item_keys(keys)
        key_rows: list[tuple[object, ...]] = []
        error_rows: list[tuple[object, ...]] = []
        for result in results:
            run, request = self._run_id, result.request_id
            error_rows.extend(
                (run, request, e.url, e.callback, e.item_type, e.field, e.message, e.data, now)
                for e in result.item_errors
            )
            if result.item_keys:
                kept: list[tuple[str, str]] = []
                for index, item in enumerate(result.items):
                    if (key := result.item_keys.get(index)) is not None:
                        if (key.type, key.key_hash) in seen:
                            stats.items_dropped[DropReason.DUPLICATE.value] += 1
                            continue
                        seen.add((key.type, key.key_hash))
                        key_rows.append((key.type, key.key_hash, key.key, self._run_id, now))
                    kept.append(item)
                result.items, result.item_keys = kept, {}
            stats.items_dropped.update(reason.value for reason in result.dropped)
            if result.item_errors:
                stats.items_dropped[DropReason.INVALID.value] += len(result.item_errors)
        script.add(statements.INSERT_ITEM_KEY, key_rows)
        script.add(statements.INSERT_ITEM_ERROR, error_rows)

    async def _stored_item_keys(self, keys: list[ItemKey]) -> set[tuple[str, int]]:
        by_type: dict[str, set[int]] = {}
        for key in keys:
            by_type.setdefault(key.type, set()).add(key.key_hash)
        sql = "SELECT key_hash FROM item_keys WHERE type = ? AND key_hash IN ({marks})"
        found: set[tuple[str, int]] = set()
        for type_name, hashes in by_type.items():
            rows = await select_in(self._conn, sql, sorted(hashes), params=(type_name,))
            found.update((type_name, int(row[0])) for row in rows)
        return found


def _is_awaited(message: _Message) -> bool:
    """Whether a coroutine waits for this message to be processed."""
    return isinstance(message, _ClaimOrder | _Flush) or (
        isinstance(message, Seeds) and message.committed is not None
    )


def _commit_waiters(writes: Sequence[PageResult | Seeds]) -> list[asyncio.Future[None]]:
    return [m.committed for m in writes if isinstance(m, Seeds) and m.committed is not None]


_DATABASE_FAILURES: Final = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_CANTOPEN",
    "SQLITE_NOMEM",
    "SQLITE_PERM",
    "SQLITE_PROTOCOL",
    "SQLITE_NOLFS",
    "SQLITE_AUTH",
)


def _is_database_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because of the database itself, not because of a row."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is None:  # no SQLite code (e.g. a closed connection): not a row's fault either
        return not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError)
    return str(name).startswith(_DATABASE_FAILURES)


def _seed_rows(seeds: Seeds) -> int:
    return len(seeds.candidates) + len(seeds.skipped) + len(seeds.errors)


def _halves(seeds: Seeds) -> tuple[Seeds, Seeds]:
    """Two messages holding the rows of `seeds` (its waiter stays with the original)."""
    rows: list[Candidate | Skipped | ErrorRecord] = [*seeds.candidates, *seeds.skipped]
    rows.extend(seeds.errors)
    middle = len(rows) // 2
    halves = (Seeds(), Seeds())
    for index, row in enumerate(rows):
        half = halves[index >= middle]
        if isinstance(row, Candidate):
            half.candidates.append(row)
        elif isinstance(row, Skipped):
            half.skipped.append(row)
        else:
            half.errors.append(row)
    return halves


def _refused_record(refused: PageResult | Seeds, exc: Exception) -> PageResult | Seeds:
    """What is written instead of a result (or a single discovered request) the database
    refused: its request failed with an `internal` error, nothing else of it kept."""
    if isinstance(refused, PageResult):
        claimed = Claimed(id=refused.request_id, request=Request(refused.url), attempts=0)
        return internal_failure(claimed, exc, attempts=refused.attempts)
    found: list[Candidate | Skipped | ErrorRecord] = [*refused.candidates, *refused.skipped]
    found.extend(refused.errors)
    (row,) = found
    error = internal_error(row.url, exc, attempt=0, callback=None)
    if not isinstance(row, Candidate):
        return Seeds(errors=[error])
    skipped = Skipped(
        url=error.url,
        fingerprint=row.fingerprint,
        host=storable(row.host)[0],
        reason=SkipReason.INTERNAL,
        depth=min(max(row.request.depth, 0), 2**31),
        parent_id=row.parent_id,
    )
    return Seeds(skipped=[skipped], errors=[error])
