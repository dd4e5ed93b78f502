"""When the feeder claims: a claim that took nothing tells it when the next one is worth
making, and a moment that passed while the claim ran means at once, not after the idle poll.
(The storage here is a double that answers claims: the race is between the claim's reading of
the time and the feeder's, which a real database makes rare but not impossible; the crawl of
tests/test_host_memory_processes.py lost it in about one run of a hundred, and the second
process then slept through the whole crawl.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import cast

import pytest

from crawler.fetch.politeness import Hosts
from crawler.fetch.robots import RobotsCache
from crawler.frontier import feeder as feeder_module
from crawler.frontier.feeder import Feeder
from crawler.records import Claimed
from crawler.settings import load_settings
from crawler.store.claims import ClaimBatch
from crawler.store.writer import BatchWriter


class ClaimsThatTakeTime:
    """Claims that take 20 ms. The first finds nothing due and reports a due time that
    passes while it runs (a host whose pause ends within the claim); the second stops the
    feeder."""

    def __init__(self) -> None:
        self.claims: list[float] = []
        self.feeder: Feeder | None = None

    async def claim(
        self,
        limit: int,
        *,
        held: Mapping[str, int] | None = None,
        per_host: int = 0,
        known: Callable[[str], bool] | None = None,
    ) -> ClaimBatch:
        started = time.time()
        self.claims.append(started)
        await asyncio.sleep(0.02)
        if len(self.claims) == 1:
            return ClaimBatch(claimed=[], pending=1, next_due=started + 0.01)
        assert self.feeder is not None
        self.feeder.stop()
        return ClaimBatch(claimed=[])

    async def submit(self, message: object) -> None:
        raise AssertionError("nothing to submit")

    def hurry(self) -> None:
        pass


async def test_a_due_time_that_passed_during_the_claim_means_claim_again_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feeder_module, "_IDLE_POLL", 60.0)
    settings = load_settings(overrides={"concurrency": 2}).settings
    hosts = Hosts(settings)
    queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
    feeder = Feeder(queue, settings=settings, hosts=hosts, robots=RobotsCache(settings, hosts))
    storage = ClaimsThatTakeTime()
    storage.feeder = feeder
    # Before the fix the feeder dropped the passed due time and slept the idle poll (60 s).
    async with asyncio.timeout(30):
        await feeder.run(cast(BatchWriter, storage))
    assert len(storage.claims) == 2
    assert storage.claims[1] - storage.claims[0] < 30
