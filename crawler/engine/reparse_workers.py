"""The worker processes of `crawler reparse --processes N`: a `ProcessPoolExecutor` that
parses chunks of stored pages, driven from the reparse's event loop with `run_in_executor`.

Each worker loads the spider itself (from the reference given on the command line, as the
parent did), opens the database read-only once (`crawler.store.pages.open_page_reader`), and
for each chunk it is given reads the pages, runs a `ChunkParser` in an event loop of its own
and returns one `ParsedChunk` per `WorkerPlan.batch` pages: the batches the parent writes,
cut where a single-process reparse cuts them, so that even a write's bookkeeping (how far a
dict view was refreshed) is the same. The parent keeps at most `CHUNKS_PER_WORKER` chunks
per worker in flight and takes their results in page order, so what it stores, and the ids
its rows get, are those of a single-process reparse; memory stays bounded by that window
however many pages the file holds. The window is wider than two because on a busy machine
each hand-over (the pool's threads in the parent, the pipes) waits for the scheduler: queued
chunks keep the workers busy meanwhile.

**Spawn, not fork.** Workers are started with multiprocessing's 'spawn': the parent holds an
open SQLite connection in the middle of a write transaction, run by aiosqlite's thread, and
neither may cross fork() (see crawler.engine.processes). A spawned worker starts a new
interpreter, imports the crawler and the spider (about 0.4 s of CPU, once per worker), and shares
nothing with the parent but what is pickled: `WorkerPlan` and the chunks' bounds on the way
out, `ParsedChunk`s on the way back (items as JSON text, the typed tables' fields rather than
the dataclasses, which the parent may not be able to import by the same name).

**Stopping.** Workers ignore SIGINT from their first instruction (it is ignored while they
are spawned, and that disposition survives exec): a Ctrl-C at the terminal reaches the whole
process group, but only the parent decides. When the reparse ends early (Ctrl-C, a callback's
`StopCrawl`, an error) the parent cancels the chunks not started, lets the workers finish
the one in hand for up to `shutdown_grace` seconds, then terminates them; they only read, so
that cannot hurt the file. Cancelled again meanwhile (a second Ctrl-C), it terminates them at
once. A worker whose parent died (`kill -9`) notices within a second and
exits. A worker that dies makes the reparse fail with `ReparseWorkerDied`, and nothing is
changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Final, final

import aiosqlite

from crawler.engine.crawl import run_to_the_end
from crawler.engine.reparse_chunks import ChunkParser, ParsedChunk
from crawler.errors import CrawlerError
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.store.pages import chunk_end, open_page_reader

__all__ = ["ChunkPool", "ReparseWorkerDied", "SpiderSource", "WorkerPlan"]

SpiderSource = Callable[[], type[Spider]]
"""Loads the spider class in a worker; must pickle (e.g. `functools.partial(find_spider, ref)`)."""
CHUNKS_PER_WORKER: Final = 4
"""Chunks in flight per worker: one being parsed, the others queued, so no worker idles."""
_PARENT_POLL: Final = 1.0
_ENDED_POLL: Final = 0.05
"""Seconds between two looks at whether the stopped workers have ended."""


class ReparseWorkerDied(CrawlerError):
    """A worker process of `reparse --processes N` died or could not start."""


@final
@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a worker needs: pickled once for each worker it starts."""

    spider_source: SpiderSource
    settings: Settings
    database: Path
    batch: int
    """Pages per `ParsedChunk`: the parent writes each as one batch."""
    log_level: int = logging.WARNING


@final
class _Worker:
    """A worker process's state: its loop, spider and parser, made once at start."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.loop = asyncio.new_event_loop()
        self.spider = plan.spider_source()()
        self.parser = ChunkParser(self.spider, plan.settings)
        self.reader = open_page_reader(plan.database)
        self.batch = plan.batch

    async def parse(self, after: int, limit: int) -> list[ParsedChunk]:
        pages = await self.reader.chunk(after, limit)
        batch = self.batch
        return [await self.parser.parse(pages[i : i + batch]) for i in range(0, len(pages), batch)]

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.spider.closed("finished"))
        finally:
            self.loop.close()
            self.reader.close()


_worker: _Worker | None = None


def _start_worker(plan: WorkerPlan, parent: int) -> None:
    """The pool's initializer: runs first in each worker process."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=plan.log_level, handlers=[handler], force=True)
    worker = _Worker(plan)
    worker.loop.run_until_complete(worker.spider.opened())
    _worker = worker
    # Run as the worker process exits normally (the pool shut down), not on a kill.
    multiprocessing.util.Finalize(worker, worker.close, exitpriority=10)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    os._exit(1)  # the parent is gone: nobody will store what this worker parses


def _parse_chunk(after: int, limit: int) -> list[ParsedChunk]:
    """The pool's task: parse the `limit` pages with bodies after page id `after`."""
    assert _worker is not None, "not in a reparse worker"
    return _worker.loop.run_until_complete(_worker.parse(after, limit))


@final
class ChunkPool:
    """`processes` workers parsing chunks of `limit` pages; results come back in page order.

    Use as an async context manager: leaving it stops the workers (at once when leaving on
    an exception, after their current chunk at most `shutdown_grace` seconds later).
    """

    def __init__(self, plan: WorkerPlan, processes: int, limit: int) -> None:
        self._plan = plan
        self._processes = processes
        self._limit = limit
        self._started = 0
        self._executor = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(plan, os.getpid()),
        )

    async def __aenter__(self) -> ChunkPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        executor = self._executor
        if exc_type is None:
            await asyncio.to_thread(executor.shutdown, wait=True)
            return
        # Python 3.14 has executor.terminate_workers(); until then, the same from here.
        workers = list((executor._processes or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        sentinels = [worker.sentinel for worker in workers]
        ended = False
        try:
            ended = await _ended(sentinels, self._plan.settings.shutdown_grace)
        finally:  # cancelled again (a second Ctrl-C): stop them now, then go on cancelled
            if not ended:
                await run_to_the_end(_stop(workers, sentinels))

    async def chunks(self, conn: aiosqlite.Connection) -> AsyncGenerator[ParsedChunk, None]:
        """Parse every page with a body, chunk by chunk, reading only the chunks' bounds
        through `conn`; yield each chunk's result in page order."""
        loop = asyncio.get_running_loop()
        window = self._processes * CHUNKS_PER_WORKER
        pending: deque[asyncio.Future[list[ParsedChunk]]] = deque()
        after: int | None = 0
        broken = False
        try:
            while True:
                while after is not None and len(pending) < window:
                    end = await chunk_end(conn, after, self._limit)
                    if end is not None:
                        pending.append(self._submit(loop, after))
                    after = end
                if not pending:
                    return
                try:
                    parsed = await pending.popleft()
                except BrokenProcessPool as exc:
                    broken = True
                    raise ReparseWorkerDied(
                        f"a reparse worker process died or could not start ({exc})"
                    ) from None
                for chunk in parsed:
                    yield chunk
        finally:
            for future in pending:
                if broken:  # each fails too: retrieve it (cancelling it upsets Python 3.11)
                    future.add_done_callback(_retrieve)
                else:
                    future.cancel()

    def _submit(
        self, loop: asyncio.AbstractEventLoop, after: int
    ) -> asyncio.Future[list[ParsedChunk]]:
        task = functools.partial(_parse_chunk, after, self._limit)
        if self._started >= self._processes or threading.current_thread() is not (
            threading.main_thread()
        ):
            return loop.run_in_executor(self._executor, task)
        # This submit may start a worker: it inherits SIGINT ignored from its first instruction.
        self._started += 1
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return loop.run_in_executor(self._executor, task)
        finally:
            signal.signal(
                signal.SIGINT, signal.default_int_handler if previous is None else previous
            )


def _retrieve(future: asyncio.Future[list[ParsedChunk]]) -> None:
    if not future.cancelled():
        future.exception()


async def _ended(sentinels: list[int], within: float) -> bool:
    """Wait up to `within` seconds for every process of `sentinels` to end; a cancellation
    ends the wait at once (a thread blocked in `multiprocessing.connection.wait` would not,
    and the event loop would wait for it as it shuts down)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(multiprocessing.connection.wait(sentinels, 0)) < len(sentinels):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_ENDED_POLL)
    return True


async def _stop(workers: Sequence[BaseProcess], sentinels: list[int]) -> None:
    """Terminate the workers still running, and kill those that linger."""
    for worker in workers:
        if worker.exitcode is None:
            worker.terminate()
    if not await _ended(sentinels, 2.0):
        for worker in workers:
            worker.kill()
