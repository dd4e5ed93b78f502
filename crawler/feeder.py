"""The feeder task: keeps the in-memory `asyncio.Queue` topped up from the SQLite frontier.

The queue is a bounded window (`queue_window`); everything else waits in `requests` with
state `pending`. The feeder decides when the crawl is over: nothing claimed by this run is
still unfinished and the frontier holds no pending request. Then, or when asked to stop, it
puts one `None` per worker on the queue.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, final

from crawler.records import Claimed
from crawler.storage import Storage

__all__ = ["Feeder"]

_IDLE_POLL: Final = 1.0


@final
class Feeder:
    """Claims pending requests into the work queue and detects the end of the crawl."""

    def __init__(
        self,
        queue: asyncio.Queue[Claimed | None],
        *,
        window: int,
        workers: int,
    ) -> None:
        self._queue = queue
        self._window = window
        self._workers = workers
        self._outstanding = 0
        self._changed = asyncio.Event()
        self._stopping = False

    def hold(self) -> None:
        """Count one unit of work that may still add requests (e.g. seeding) as unfinished."""
        self._outstanding += 1

    def release(self, count: int = 1) -> None:
        """Mark `count` held or claimed requests as committed; called by the storage writer."""
        self._outstanding -= count
        self._changed.set()

    def wake(self) -> None:
        """Tell the feeder the frontier may have changed."""
        self._changed.set()

    def stop(self) -> None:
        """Stop handing out work; workers finish what they hold and exit."""
        self._stopping = True
        self._changed.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping

    async def run(self, storage: Storage) -> None:
        """Feed the queue until the crawl is finished or stopped, then stop the workers."""
        try:
            await self._feed(storage)
        finally:
            while not self._queue.empty():
                if self._queue.get_nowait() is not None:
                    self._outstanding -= 1  # never started: its lease is released at close
            for _ in range(self._workers):
                self._queue.put_nowait(None)

    async def _feed(self, storage: Storage) -> None:
        queue = self._queue
        while not self._stopping:
            self._changed.clear()
            wait = _IDLE_POLL
            room = self._window - queue.qsize()
            if room >= self._window // 2 or queue.empty():
                batch = await storage.claim(room)
                if self.stopping:  # stop() was called while the claim was running
                    return
                for claimed in batch.claimed:
                    queue.put_nowait(claimed)
                self._outstanding += len(batch.claimed)
                if batch.claimed:
                    continue
                if self._outstanding <= 0 and batch.pending == 0:
                    return
                if batch.next_due is not None:
                    wait = min(_IDLE_POLL, max(0.01, batch.next_due - time.time()))
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass
