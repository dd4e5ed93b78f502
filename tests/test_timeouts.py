"""Deadlines: one sweeper task enforcing many blocks' timeouts, with asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio

import pytest

from crawler.fetch.deadlines import Deadlines
from tests.deadline_timers import record_timers

RESOLUTION = 0.01


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    async with Deadlines(resolution=RESOLUTION) as deadlines:
        started = loop.time()
        with pytest.raises(TimeoutError), deadlines.limit(0.05):
            await asyncio.sleep(10)
        elapsed = loop.time() - started
    assert 0.05 <= elapsed < 1.0


async def test_a_block_that_ends_in_time_leaves_no_cancellation_behind() -> None:
    async with Deadlines(resolution=RESOLUTION) as deadlines:
        with deadlines.limit(0.05):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.15)  # well past the deadline: nothing may cancel us now
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


async def test_each_task_has_its_own_deadline() -> None:
    async with Deadlines(resolution=RESOLUTION) as deadlines:

        async def wait(seconds: float, limit: float) -> str:
            try:
                with deadlines.limit(limit):
                    await asyncio.sleep(seconds)
            except TimeoutError:
                return "timeout"
            return "done"

        results = await asyncio.gather(*(wait(0.02, 5.0) for _ in range(20)), wait(5.0, 0.05))
    assert results == ["done"] * 20 + ["timeout"]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async with Deadlines(resolution=RESOLUTION) as deadlines:

        async def blocked() -> None:
            with deadlines.limit(5.0):
                await asyncio.sleep(10)

        task = asyncio.create_task(blocked())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancelled_and_expired_at_once_is_a_cancellation() -> None:
    async with Deadlines(resolution=RESOLUTION) as deadlines:
        entered = asyncio.Event()

        async def blocked() -> None:
            with deadlines.limit(5.0):
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(blocked())
        await entered.wait()
        (limit,) = deadlines._deadlines
        task.cancel()
        limit.expire()  # what the sweeper does, before the task runs again: both are pending
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limit.expired


async def test_nested_limits_the_inner_one_expires_first() -> None:
    async with Deadlines(resolution=RESOLUTION) as deadlines:
        with deadlines.limit(5.0):
            with pytest.raises(TimeoutError), deadlines.limit(0.03):
                await asyncio.sleep(10)
            await asyncio.sleep(0.05)  # the outer block goes on
        assert deadlines._deadlines == {}


async def test_limit_outside_the_async_with_block_is_an_error() -> None:
    deadlines = Deadlines(resolution=RESOLUTION)
    with pytest.raises(RuntimeError, match="outside"), deadlines.limit(1.0):
        await asyncio.sleep(0)


async def test_a_deadline_shorter_than_the_resolution_fires_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweeper looks every 5 s; a 0.05 s deadline does not wait for it (it did: a
    per-host timeout shorter than the session's fired up to the resolution late): the loop
    holds a timer for the deadline itself, at once."""
    timers = record_timers(monkeypatch)
    loop = asyncio.get_running_loop()
    async with Deadlines(resolution=5.0) as deadlines:
        started = loop.time()
        with pytest.raises(TimeoutError), deadlines.limit(0.05):
            await asyncio.sleep(10)
        elapsed = loop.time() - started
    assert 0.05 <= elapsed < 5.0  # (the next look)
    assert len(timers) == 1 and timers[0].when == timers[0].deadline


async def test_a_deadline_between_two_looks_fires_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 1.2 s deadline with looks every 0.5 s fires at 1.2 s, not at the look at 1.5 s: the
    look before it arms a timer for the deadline itself (the loop's timer, not a window of
    wall-clock time: a loaded machine may run the timer late, not arm it late)."""
    timers = record_timers(monkeypatch)
    loop = asyncio.get_running_loop()
    async with Deadlines(resolution=0.5) as deadlines:
        started = loop.time()
        with pytest.raises(TimeoutError), deadlines.limit(1.2):
            await asyncio.sleep(10)
        elapsed = loop.time() - started
    assert elapsed >= 1.2
    assert len(timers) == 1 and timers[0].when == timers[0].deadline


async def test_blocks_far_from_their_deadline_arm_no_timer() -> None:
    """What keeps the sweeper cheaper than `asyncio.timeout`: a block that ends long before
    its deadline never has a timer of its own; one near it does."""
    async with Deadlines(resolution=0.05) as deadlines:
        with deadlines.limit(60.0) as far:
            await asyncio.sleep(0.2)  # several looks
            assert not far.armed
        with deadlines.limit(0.3) as near:
            await asyncio.sleep(0.27)  # the last look was within two resolutions of it
            assert near.armed
