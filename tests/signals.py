"""Signal dispositions for the tests of stopping commands: starting a command as a shell
starts a background job, and reading what a process ignores, blocks or has not yet taken
delivery of from /proc."""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["as_a_background_job", "blocked", "delivered", "ignored"]


def as_a_background_job() -> None:
    """A `preexec_fn`: SIGINT ignored, as a non-interactive shell starts `command &` (an
    ignored signal stays ignored across exec); only SIGTERM can stop the command."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ignored(pid: int | str = "self") -> set[signal.Signals]:
    """The signals process `pid` ignores (SIG_IGN), as the kernel sees it (Linux /proc)."""
    return _signals(pid, "SigIgn")


def blocked(pid: int | str = "self") -> set[signal.Signals]:
    """The signals blocked in process `pid`'s main thread (Linux /proc)."""
    return _signals(pid, "SigBlk")


def delivered(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has taken delivery of `sig` (it is no longer pending): a second
    one sent from now on is a signal of its own, not merged with the first by the kernel."""
    return sig not in _signals(pid, "ShdPnd") | _signals(pid, "SigPnd")


def _signals(pid: int | str, field: str) -> set[signal.Signals]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            mask = int(value, 16)
            return {sig for sig in signal.Signals if mask >> (sig - 1) & 1}
    raise AssertionError(f"no {field} in /proc/{pid}/status")
