"""What the deadlines sweeper armed: each event-loop timer a `Limit` set, with the deadline it
was set for, so that a test can check that a deadline fires on time by the timer the loop
holds for it rather than by a wall-clock window (which a loaded machine's stalls exceed)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from crawler.fetch.deadlines import Limit

__all__ = ["Armed", "record_timers"]


@dataclass(frozen=True, slots=True)
class Armed:
    """One timer: the block's deadline and the loop time the timer fires at."""

    deadline: float
    when: float


def record_timers(monkeypatch: pytest.MonkeyPatch) -> list[Armed]:
    """Record every timer a `Limit` arms from now on, in order."""
    armed: list[Armed] = []
    arm = Limit.arm

    def recording(limit: Limit, deadline: float) -> None:
        arm(limit, deadline)
        timer = limit._timer
        assert timer is not None
        armed.append(Armed(limit._deadlines._deadlines[limit], timer.when()))

    monkeypatch.setattr(Limit, "arm", recording)
    return armed
