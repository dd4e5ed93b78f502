"""The single writer: every write to the crawl database goes through one task, in batches.

Workers hand `PageResult`s to `Storage.submit`; the writer task drains its inbox and commits
many results per `BEGIN IMMEDIATE … COMMIT`. Each result's page, items, links, errors, newly
discovered requests and the request's final state are in the same transaction, so a crash
never leaves a page marked done whose links were lost. A batch is usually a single call to
aiosqlite's thread (see `crawler.bulk`). Claims of pending requests (with a lease, so
several processes can share one file) also go through the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, final

import aiosqlite

from crawler.bulk import BulkStatement, Script
from crawler.errors import SkipReason, StorageError
from crawler.http import Request
from crawler.item_tables import ItemTables
from crawler.links import host_of
from crawler.records import (
    Candidate,
    Claimed,
    DropReason,
    ErrorRecord,
    ItemKey,
    PageResult,
    RequestState,
    Skipped,
)
from crawler.settings import Settings
from crawler.stats import Stats

__all__ = ["ClaimBatch", "Seeds", "Storage", "utc_now"]

logger = logging.getLogger(__name__)

LEASE_SECONDS: Final = 120.0
_SQL_PARAMS_PER_QUERY: Final = 500
_HOSTS_PER_CLAIM: Final = 256


def utc_now() -> str:
    """Return the current time as ISO-8601 UTC text, the format of every `*_at` column
    (`2026-12-05T06:55:51.397+00:00`, as `datetime.isoformat(timespec="milliseconds")`).

    Called for every page: the date and time of day are formatted once per second.
    """
    now = time.time()
    second = int(now)
    return f"{_utc_second(second)}.{int((now - second) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


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


@final
@dataclass(slots=True, kw_only=True)
class ClaimBatch:
    """What a claim returned, and what the frontier looked like if it returned nothing."""

    claimed: list[Claimed]
    more: bool = False
    """Some host had more due requests than this claim took (or the claim stopped at its
    limit): another claim would find work even if nothing is committed in between."""
    pending: int = 0
    """Pending rows left (leased elsewhere or not yet due); counted only when none was claimed."""
    next_due: float | None = None
    """Earliest `not_before` among pending rows, when any is delayed."""
    leased_elsewhere: int = 0
    """Pending rows that other runs (processes sharing the file) hold under a live lease;
    counted only when none was claimed. Their pages may bring new work at any moment."""
    capped: bool = False
    """Nothing was claimed because hosts with pending requests already hold `per_host` in
    memory; then `pending` and `next_due` are not counted (that would scan the frontier)."""


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

    Create it with an open connection and a run id, run `run_writer()` as a task, and call
    `close()` (after the writer has stopped) to release leases and close the file.
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
        self._admitted_total = 0
        self._admitted_by_host: Counter[str] = Counter()
        """Requests admitted per host, kept only when `max_pages_per_host` is set."""
        self._last_lease_renewal = time.monotonic()
        self._host_cursor = ""
        self._item_tables = ItemTables()

    async def load_counts(self) -> None:
        """Read the totals a resumed crawl continues from (the `max_pages` and
        `max_pages_per_host` budgets, pending).

        URLs an earlier run refused only because its `max_pages` or `max_pages_per_host`
        budget was spent go back to pending, as far as this run's budgets allow: the limit
        belonged to that run, not to the URLs.
        """
        if self._settings.max_pages:  # a scan of the whole table: only when it is needed
            self._admitted_total = await self._scalar(
                "SELECT count(*) FROM requests WHERE state != 'skipped'"
            )
        if self._settings.max_pages_per_host:
            async with self._conn.execute(
                "SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host"
            ) as cursor:
                self._admitted_by_host.update({str(h): int(n) for h, n in await cursor.fetchall()})
        await self._reopen_budget_skips()
        if self._settings.order == "dfs":
            await self._conn.execute(
                "CREATE INDEX IF NOT EXISTS requests_frontier_dfs "
                "ON requests (host, priority DESC, id DESC) WHERE state = 'pending'"
            )
        self._stats.pending = await self._scalar(
            "SELECT count(*) FROM requests WHERE state = 'pending'"
        )

    async def _reopen_budget_skips(self) -> None:
        """Put rows skipped for `max_pages` or `max_pages_per_host` back to pending, oldest
        first, as far as this run's budgets have room (each host's, with a per-host budget)."""
        max_pages, per_host = self._settings.max_pages, self._settings.max_pages_per_host
        room = max(0, max_pages - self._admitted_total) if max_pages else -1  # -1: no limit
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
            self._admitted_total += cursor.rowcount
            if host is not None:
                self._admitted_by_host[host] += cursor.rowcount
            if room >= 0:
                room -= cursor.rowcount

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
                await self._commit(writes)
            for order in orders:
                if not order.reply.done():
                    order.reply.set_result(await self._claim(order))
            if time.monotonic() - self._last_lease_renewal > LEASE_SECONDS / 4:
                await self._renew_leases()
        except sqlite3.Error as exc:
            failure = StorageError(f"database write failed: {exc}")
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

    async def _commit(self, writes: Sequence[PageResult | Seeds]) -> None:
        """Write a batch in one transaction. Usually that is one call to the database thread
        (see `crawler.bulk`); budgets, item keys, stored bodies and new item types need
        queries or parameters in between, and take one call per statement instead."""
        conn = self._conn
        now = utc_now()
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
            new_rows, budget_skips = await self._admit(candidates, now)
            skipped.extend(budget_skips)
            rest = Script()
            rest.add(_INSERT_SKIPPED, [_skipped_row(self._run_id, s, now) for s in skipped])
            await self._write_results(results, now, rest)
            rest.add(_INSERT_ERROR, [_error_row(self._run_id, None, e) for e in seed_errors])
            # INSERT OR IGNORE drops what the table already has (with no budget to apply,
            # _admit did not look; another process may also have added it just now)
            if item_inserts is not None:
                script = Script()
                if new_rows:
                    script.add_sql(_CREATE_ADMITTED_COUNT)
                    script.add(_INSERT_REQUEST, new_rows)
                    script.add_sql(_COUNT_ADMITTED)
                script.extend(rest)
                for sql in item_inserts:
                    script.add_sql(sql)
                await script.run_as_transaction(conn)
                admitted = await self._admitted_in_last_batch() if new_rows else 0
                already_known = len(new_rows) - admitted
            else:
                changes_before = conn.total_changes
                await _INSERT_REQUEST.run(conn, new_rows)
                already_known = len(new_rows) - (conn.total_changes - changes_before)
                await rest.run_each(conn)
                await self._write_after_script(results)
                await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        stats = self._stats
        stats.admitted += len(new_rows) - already_known
        stats.pending += len(new_rows) - already_known
        stats.skipped[SkipReason.DUPLICATE.value] += already_known
        self._admitted_total -= already_known
        for skip in skipped:
            stats.skipped[skip.reason.value] += 1
        for error in seed_errors:
            stats.errors[error.kind] += 1

    def _one_call_item_inserts(self, results: list[PageResult]) -> list[str] | None:
        """The typed-table inserts of a batch that can be written in one call, else None."""
        settings = self._settings
        if not results:
            return None  # start requests: large and rare, plain parameters are cheaper
        if settings.max_pages or settings.max_pages_per_host:
            return None  # the budgets count inside the transaction
        for result in results:
            if result.item_keys or (result.page is not None and result.page.body is not None):
                return None  # stored keys are looked up; bodies are BLOB parameters
        return self._item_tables.ready_inserts(results)

    async def _admitted_in_last_batch(self) -> int:
        """How many requests the last one-call batch inserted (`_COUNT_ADMITTED` noted it)."""
        async with self._conn.execute(_TAKE_ADMITTED_COUNT) as cursor:
            return sum(int(row[0]) for row in await cursor.fetchall())

    async def _admit(
        self, candidates: list[Candidate], now: str
    ) -> tuple[list[tuple[object, ...]], list[Skipped]]:
        """De-duplicate candidates against the table and apply the `max_pages` and
        `max_pages_per_host` budgets."""
        unique: dict[int, Candidate] = {}
        for candidate in candidates:
            if candidate.fingerprint in unique:
                self._stats.skipped[SkipReason.DUPLICATE.value] += 1
            else:
                unique[candidate.fingerprint] = candidate
        max_pages, per_host = self._settings.max_pages, self._settings.max_pages_per_host
        # Budgets need to know which candidates are new before inserting; otherwise the
        # unique index sorts them out during the insert (one index lookup instead of two).
        existing = (
            await self._existing_fingerprints(list(unique)) if max_pages or per_host else set()
        )
        self._stats.skipped[SkipReason.DUPLICATE.value] += len(existing)
        if max_pages and unique:
            # Other processes may share this file (--processes): count inside the
            # transaction, so the budget holds for all of them together.
            self._admitted_total = await self._scalar(
                "SELECT count(*) FROM requests WHERE state != 'skipped'"
            )
        rows: list[tuple[object, ...]] = []
        over_budget: list[Skipped] = []
        for fp, c in unique.items():
            if fp in existing:
                continue
            reason = None
            if max_pages and self._admitted_total >= max_pages:
                reason = SkipReason.MAX_PAGES
            elif per_host and self._admitted_by_host[c.host] >= per_host:
                reason = SkipReason.MAX_PAGES_PER_HOST
            if reason is not None:
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
            self._admitted_total += 1
            if per_host:
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

    async def _existing_fingerprints(self, fingerprints: list[int]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(fingerprints), _SQL_PARAMS_PER_QUERY):
            chunk = fingerprints[start : start + _SQL_PARAMS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT fingerprint FROM requests WHERE fingerprint IN ({marks})"
            async with self._conn.execute(sql, chunk) as cursor:
                found.update(row[0] for row in await cursor.fetchall())
        return found

    async def _write_results(self, results: list[PageResult], now: str, script: Script) -> None:
        """Add the rows of a batch's results to `script` (pages, links, items, errors, request
        states, robots answers); the item checks before them may query the table."""
        if not results:
            return
        await self._write_item_checks(results, now, script)
        pages: list[tuple[object, ...]] = []
        links: list[tuple[object, ...]] = []
        items: list[tuple[object, ...]] = []
        errors: list[tuple[object, ...]] = []
        updates: list[tuple[object, ...]] = []
        robots_rows: list[tuple[object, ...]] = []
        stats = self._stats
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
            errors.extend(_error_row(self._run_id, result.request_id, e) for e in result.errors)
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
                self._admitted_total -= 1  # never fetched: it does not use the max_pages budget
                if self._settings.max_pages_per_host:
                    self._admitted_by_host[host_of(result.url)] -= 1
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
        script.add(_INSERT_PAGE, pages)
        script.add(_INSERT_LINK, links)
        script.add(_INSERT_ITEM, items)
        script.add(_INSERT_ERROR, errors)
        script.add(_FINISH_REQUEST, updates)
        script.add(_UPSERT_ROBOTS, robots_rows)

    async def _write_after_script(self, results: list[PageResult]) -> None:
        """What needs the script's rows in place: page bodies (BLOBs cannot travel in JSON)
        and the typed item tables and views, filled from `items`."""
        bodies = [
            (result.page.body, result.request_id)
            for result in results
            if result.page is not None and result.page.body is not None
        ]
        if bodies:
            await self._conn.executemany(_SET_PAGE_BODY, bodies)
        if results:
            await self._item_tables.write(self._conn, results)

    async def _write_item_checks(self, results: list[PageResult], now: str, script: Script) -> None:
        """Drop items whose de-duplication key is already stored (by an earlier batch or run,
        or earlier in this batch) and store the new keys; write refused items to `item_errors`.
        Runs first, so everything after it sees only the items that are kept."""
        stats = self._stats
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
        script.add(_INSERT_ITEM_KEY, key_rows)
        script.add(_INSERT_ITEM_ERROR, error_rows)

    async def _stored_item_keys(self, keys: list[ItemKey]) -> set[tuple[str, int]]:
        by_type: dict[str, set[int]] = {}
        for key in keys:
            by_type.setdefault(key.type, set()).add(key.key_hash)
        found: set[tuple[str, int]] = set()
        for type_name, hashes in by_type.items():
            ordered = sorted(hashes)
            for start in range(0, len(ordered), _SQL_PARAMS_PER_QUERY):
                chunk = ordered[start : start + _SQL_PARAMS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key_hash FROM item_keys WHERE type = ? AND key_hash IN ({marks})"
                async with self._conn.execute(sql, [type_name, *chunk]) as cursor:
                    found.update((type_name, row[0]) for row in await cursor.fetchall())
        return found

    async def _claim(self, order: _ClaimOrder) -> ClaimBatch:
        now = time.time()
        descending = self._settings.order == "dfs"
        sql = _CLAIM.format(order="priority DESC, id DESC" if descending else "priority DESC, id")
        per_host = order.per_host or order.limit
        claimed: list[Claimed] = []
        capped = more = False
        for host in await self._pending_hosts():
            if len(claimed) >= order.limit:
                more = True
                break
            host_room = per_host - order.held.get(host, 0)
            if host_room < max(1, per_host // 4):
                capped = True  # refill a host in chunks, not one request per finished page
                continue
            room = min(order.limit - len(claimed), host_room)
            params = (self._run_id, now + LEASE_SECONDS, host, now, now, room)
            async with self._conn.execute(sql, params) as cursor:
                rows = list(await cursor.fetchall())
            claimed.extend(_claimed_from_row(row) for row in rows)
            more = more or len(rows) == room
            self._host_cursor = host
        claimed.sort(key=lambda c: (-c.request.priority, -c.id if descending else c.id))
        if claimed or capped:
            return ClaimBatch(claimed=claimed, more=more, capped=capped and not claimed)
        async with self._conn.execute(_PENDING_SUMMARY, (self._run_id, now)) as cursor:
            row = await cursor.fetchone()
        pending, next_due, elsewhere = (row[0], row[1], row[2]) if row else (0, None, 0)
        return ClaimBatch(
            claimed=[],
            pending=int(pending),
            next_due=next_due,
            leased_elsewhere=int(elsewhere or 0),
        )

    async def _pending_hosts(self) -> list[str]:
        """Up to `_HOSTS_PER_CLAIM` hosts with pending requests, in turn: those after the
        host the last claim ended with, then from the first host on."""
        hosts = await self._hosts_after(self._host_cursor, _HOSTS_PER_CLAIM)
        if len(hosts) < _HOSTS_PER_CLAIM and self._host_cursor:
            wrapped = await self._hosts_after("", _HOSTS_PER_CLAIM - len(hosts))
            hosts.extend(host for host in wrapped if host <= self._host_cursor)
        return hosts

    async def _hosts_after(self, after: str, count: int) -> list[str]:
        async with self._conn.execute(_PENDING_HOSTS, (after, count)) as cursor:
            return [str(row[0]) for row in await cursor.fetchall()]

    async def _renew_leases(self) -> None:
        self._last_lease_renewal = time.monotonic()
        await self._conn.execute(
            "UPDATE requests SET lease_expires = ? WHERE lease_owner = ? AND state = 'pending'",
            (time.time() + LEASE_SECONDS, self._run_id),
        )
        await self._conn.execute(
            "UPDATE crawls SET heartbeat_at = ? WHERE id = ?", (time.time(), self._run_id)
        )

    async def _scalar(self, sql: str, params: Iterable[object] = ()) -> int:
        async with self._conn.execute(sql, tuple(params)) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def _is_awaited(message: _Message) -> bool:
    """Whether a coroutine waits for this message to be processed."""
    return isinstance(message, _ClaimOrder | _Flush) or (
        isinstance(message, Seeds) and message.committed is not None
    )


def _commit_waiters(writes: Sequence[PageResult | Seeds]) -> list[asyncio.Future[None]]:
    return [m.committed for m in writes if isinstance(m, Seeds) and m.committed is not None]


def _skipped_row(run_id: int, skip: Skipped, now: str) -> tuple[object, ...]:
    return (
        skip.url,
        skip.fingerprint,
        skip.host,
        skip.depth,
        skip.reason.value,
        skip.parent_id,
        run_id,
        now,
        now,
    )


def _error_row(run_id: int, request_id: int | None, error: ErrorRecord) -> tuple[object, ...]:
    return (
        run_id,
        request_id,
        error.url,
        error.kind,
        error.message,
        error.attempt,
        error.callback,
        error.created_at,
    )


def _claimed_from_row(row: Sequence[object]) -> Claimed:
    """Rebuild a claimed request from the columns `_CLAIM` returns."""
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
_INSERT_REQUEST: Final = BulkStatement(
    "INSERT OR IGNORE INTO requests (url, fingerprint, host, method, callback, headers, meta, "
    "depth, priority, state, parent_id, crawl_id, discovered_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, 'pending', {9}, {10}, {11} "
    "FROM {rows} ORDER BY {order}",
    12,
)
_CREATE_ADMITTED_COUNT: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS batch_admitted (admitted INTEGER NOT NULL)"
)
_COUNT_ADMITTED: Final = "INSERT INTO temp.batch_admitted (admitted) SELECT changes()"
"""Right after the requests insert of a one-call batch: how many rows that insert added."""
_TAKE_ADMITTED_COUNT: Final = "DELETE FROM temp.batch_admitted RETURNING admitted"
_INSERT_SKIPPED: Final = BulkStatement(
    "INSERT OR IGNORE INTO requests (url, fingerprint, host, depth, state, reason, parent_id, "
    "crawl_id, discovered_at, finished_at) "
    "SELECT {0}, {1}, {2}, {3}, 'skipped', {4}, {5}, {6}, {7}, {8} FROM {rows} ORDER BY {order}",
    9,
)
_INSERT_PAGE: Final = BulkStatement(
    "INSERT INTO pages (request_id, crawl_id, url, final_url, status, content_type, "
    "encoding, size_bytes, depth, elapsed_ms, fetched_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10} "
    "FROM {rows} ORDER BY {order}",
    11,
)
_SET_PAGE_BODY: Final = "UPDATE pages SET body = ? WHERE request_id = ?"
_INSERT_LINK: Final = BulkStatement(
    "INSERT INTO links (page_id, from_url, to_url) SELECT page.id, {1}, link.value "
    "FROM {rows} JOIN pages AS page ON page.request_id = {0} "
    "JOIN json_each({row}, '$[2]') AS link ORDER BY {order}, link.key",
    3,
)
_INSERT_ITEM: Final = BulkStatement(
    "INSERT INTO items (crawl_id, request_id, page_url, type, data, created_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5} FROM {rows} ORDER BY {order}",
    6,
)
_INSERT_ERROR: Final = BulkStatement(
    "INSERT INTO errors (crawl_id, request_id, url, kind, message, attempt, callback, created_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7} FROM {rows} ORDER BY {order}",
    8,
)
_INSERT_ITEM_KEY: Final = BulkStatement(
    "INSERT INTO item_keys (type, key_hash, key, crawl_id, created_at) "
    "SELECT {0}, {1}, {2}, {3}, {4} FROM {rows} ORDER BY {order}",
    5,
)
_INSERT_ITEM_ERROR: Final = BulkStatement(
    "INSERT INTO item_errors (crawl_id, request_id, url, callback, item_type, field, message, "
    "data, created_at) SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8} "
    "FROM {rows} ORDER BY {order}",
    9,
)
_FINISH_REQUEST: Final = BulkStatement(
    "UPDATE requests SET state = {0}, reason = {1}, attempts = {2}, not_before = {3}, "
    "finished_at = {4}, lease_owner = NULL, lease_expires = NULL "
    "FROM {rows} WHERE requests.id = {5}",
    6,
)
_CLAIM: Final = (
    "UPDATE requests SET lease_owner = ?, lease_expires = ? WHERE id IN ("
    " SELECT id FROM requests WHERE state = 'pending' AND host = ?"
    " AND (lease_expires IS NULL OR lease_expires < ?)"
    " AND (not_before IS NULL OR not_before <= ?)"
    " ORDER BY {order} LIMIT ?) "
    "RETURNING id, url, method, callback, headers, meta, depth, priority, attempts"
)
_PENDING_SUMMARY: Final = (
    "SELECT count(*), min(not_before), "
    "sum(lease_owner IS NOT NULL AND lease_owner != ? AND lease_expires >= ?) "
    "FROM requests WHERE state = 'pending'"
)
"""Pending rows, the earliest `not_before`, and how many other runs hold under a live lease."""
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
_UPSERT_ROBOTS: Final = BulkStatement(
    "INSERT OR REPLACE INTO robots (url, host, fetched_at, status, outcome, crawl_delay, body, "
    "error, crawl_id) SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8} "
    "FROM {rows} ORDER BY {order}",
    9,
)
