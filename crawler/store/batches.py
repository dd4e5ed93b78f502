"""The writer task of a crawl run, whatever the database: an inbox of results, claim orders
and flushes, gathered into batches that a subclass commits in one transaction each
(crawler.store.writer's `Storage` for SQLite, crawler.store.pg_writer's for PostgreSQL), and
the crawl's time series (crawler.store.samples) where the database keeps one: a sample that
falls due rides in the next batch, or is written alone when the writer is idle for a whole
`stats_interval`. Between batches, it also passes on the pauses other processes stored for
the hosts this one holds (`watch`; crawler.store.claims `stored_pauses`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crawler.errors import StorageError
from crawler.records import HostRecord, PageResult
from crawler.settings import Settings
from crawler.stats import Stats
from crawler.store.claims import ClaimBatch, ClaimSource
from crawler.store.refusals import commit_or_split
from crawler.store.rows import Seeds
from crawler.store.samples import Sample, Sampler

__all__ = ["BatchWriter"]


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


class BatchWriter:
    """The writer task of one crawl run, whatever the database: an inbox of results, claim
    orders and flushes, gathered into batches that a subclass commits in one transaction
    each (`_commit`: `Storage` for SQLite, crawler.store.pg_writer for PostgreSQL).

    Call `load_counts()`, run `run_writer()` as a task and end it with `stop_writer()`.
    """

    def __init__(
        self,
        *,
        run_id: int,
        settings: Settings,
        stats: Stats,
        on_committed: Callable[[int], None],
        claims: ClaimSource,
        on_hosts_saved: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`on_committed` is told how many results each commit wrote, `on_hosts_saved` the
        host of each host snapshot it wrote (crawler.fetch.politeness: `Hosts.saved`)."""
        self._run_id = run_id
        self._settings = settings
        self._stats = stats
        self._on_committed = on_committed
        self._on_hosts_saved = on_hosts_saved
        self._sampler: Sampler | None = None  # the time series, where the database has one
        self._inbox: asyncio.Queue[_Message | None] = asyncio.Queue(
            maxsize=settings.write_batch_size * 4
        )
        self._claims = claims
        self._watched: (
            tuple[Callable[[], Collection[str]], Callable[[list[HostRecord]], None]] | None
        ) = None

    def watch(
        self, hosts: Callable[[], Collection[str]], learn: Callable[[list[HostRecord]], None]
    ) -> None:
        """Between batches, tell `learn` the stored state of those of `hosts()` (the hosts
        the crawl holds requests of) that other processes sharing the database paused
        (crawler.fetch.politeness `Hosts.learn`)."""
        self._watched = (hosts, learn)

    async def load_counts(self) -> None:
        """Read what a resumed crawl continues from (budgets, the pending count)."""
        raise NotImplementedError

    async def _commit(self, writes: Sequence[PageResult | Seeds]) -> None:
        """Write a batch in one transaction."""
        raise NotImplementedError

    def _forget_item_tables(self) -> None:
        """Drop what the writer knows of item tables (after a rollback that may undo some)."""

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
            wait = None if self._sampler is None else self._sampler.wait()
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
        sample = None if self._sampler is None else self._sampler.take(force=force)
        if sample is None or self._sampler is None:
            return
        await self._write_alone(sample)
        self._sampler.written(sample)

    async def _write_alone(self, sample: Sample) -> None:
        """Write a sample in a transaction of its own (only writers with a sampler)."""
        raise NotImplementedError

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
            if self._watched is not None:
                hosts, learn = self._watched
                if paused := await self._claims.stored_pauses(hosts):
                    learn(paused)  # before a claim's requests of those hosts are handed out
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
            self._on_committed(len(results))
            if self._on_hosts_saved is not None:
                self._on_hosts_saved([m.host.host for m in results if m.host])

    async def _commit_restoring(self, writes: Sequence[PageResult | Seeds]) -> None:
        """`_commit`, leaving the writer's state as it was if the transaction fails; the
        time series counts what it committed, as the crawl's counters do (a result whose
        rows were refused counts as the failure recorded in its place, crawler.store.refusals)."""
        results = [(m, m.items, m.item_keys) for m in writes if isinstance(m, PageResult)]
        try:
            await self._commit(writes)
        except BaseException:
            for result, items, keys in results:
                result.items, result.item_keys = items, keys
            self._forget_item_tables()
            raise
        if self._sampler is not None:
            self._sampler.observe(result for result, _, _ in results)


def _is_awaited(message: _Message) -> bool:
    """Whether a coroutine waits for this message to be processed."""
    return isinstance(message, _ClaimOrder | _Flush) or (
        isinstance(message, Seeds) and message.committed is not None
    )


def _commit_waiters(writes: Sequence[PageResult | Seeds]) -> list[asyncio.Future[None]]:
    return [m.committed for m in writes if isinstance(m, Seeds) and m.committed is not None]
