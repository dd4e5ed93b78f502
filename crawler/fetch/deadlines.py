"""Request timeouts: one sweeper task watches the deadlines of every attempt in flight.

`asyncio.timeout()` arms an event-loop timer per use and cancels it again when the block
ends. For a crawl that is one timer per request, ~3% of its CPU at 2,000 requests a second
(the loop's heap of timers fills with cancelled ones). `Deadlines` keeps each attempt's
deadline in a dict instead and looks at them every `resolution` seconds; only a deadline that
falls before the look after next gets an event-loop timer of its own, armed for the deadline
itself. So a timeout fires on time (as `asyncio.timeout`'s would), whatever its length and
the resolution, and the blocks that end well before their deadline, nearly all of them in a
crawl, never arm a timer. The semantics are `asyncio.timeout`'s: the task is cancelled and
the block raises `TimeoutError`, while a cancellation from elsewhere stays a cancellation.

Example:
    ```python
    async with Deadlines(resolution=0.25) as deadlines:
        with deadlines.limit(30.0):
            await fetch_everything()
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from types import TracebackType
from typing import Any, Self, final

__all__ = ["Deadlines"]


@final
class Deadlines:
    """Deadlines of running tasks, enforced by one sweeper task while `async with` is open."""

    def __init__(self, *, resolution: float) -> None:
        self._resolution = resolution
        self._deadlines: dict[Limit, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._horizon = -math.inf
        """Loop time up to which deadlines get a timer of their own when added: the sweeper
        may look next only after them."""

    async def __aenter__(self) -> Self:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="deadlines")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper  # anything else it raised surfaces here
            self._sweeper = None

    def limit(self, seconds: float) -> Limit:
        """Return a context manager that raises `TimeoutError` in the current task when its
        block runs longer than `seconds`."""
        return Limit(self, seconds)

    def _add(self, limit: Limit, deadline: float) -> None:
        if self._sweeper is None or self._sweeper.done():
            raise RuntimeError("Deadlines used outside its `async with` block")
        self._deadlines[limit] = deadline
        if deadline <= self._horizon:
            limit.arm(deadline)

    def _remove(self, limit: Limit) -> None:
        del self._deadlines[limit]

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Two resolutions ahead: the next look may come late, by up to one resolution
            # on a busy loop, and the deadlines before it must not wait for it.
            self._horizon = horizon = loop.time() + 2 * self._resolution
            for limit, deadline in self._deadlines.items():
                if deadline <= horizon and not limit.armed:
                    limit.arm(deadline)
            await asyncio.sleep(self._resolution)


@final
class Limit:
    """One block's deadline (see `Deadlines.limit`)."""

    __slots__ = ("_cancelling", "_deadlines", "_seconds", "_task", "_timer", "expired")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False
        """Whether the deadline passed while the block ran (its task was cancelled)."""

    def __enter__(self) -> Self:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self._deadlines._add(self, task.get_loop().time() + self._seconds)
        return self

    @property
    def armed(self) -> bool:
        """Whether an event-loop timer is set for the deadline."""
        return self._timer is not None

    def arm(self, deadline: float) -> None:
        """Set an event-loop timer that expires the block at `deadline` (loop time)."""
        if self._task is not None:
            self._timer = self._task.get_loop().call_at(deadline, self.expire)

    def expire(self) -> None:
        """The deadline passed: cancel the block's task (called by its timer)."""
        if self.expired:
            return
        self.expired = True
        if self._task is not None:
            self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadlines._remove(self)
        if self._timer is not None:
            self._timer.cancel()
        if not self.expired or self._task is None:
            return
        # Our cancel() is undone; only a cancellation nobody else asked for becomes a
        # TimeoutError (as in asyncio.timeout).
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
