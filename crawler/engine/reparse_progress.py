"""Progress of `crawler reparse`: pages read out of the pages with a stored body, pages per
second and the time left. On a terminal a live line (redrawn twice a second, gone at the
end); otherwise a plain line every `progress_interval` seconds, for logs and CI.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import final

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["ReparseProgress", "show_reparse_progress"]


@final
@dataclass(slots=True)
class ReparseProgress:
    """How far a reparse is: `done` of `total` pages with a body read (parsed or not)."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self, now: float | None = None) -> float:
        """Pages per second so far (`now`: a `time.monotonic()` reading)."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        """`reparse: 12,300/100,000 pages (12%), 1,530.2 pages/s, ETA 51s`."""
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        rate = self.rate(now)
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        return f"reparse: {self.done:,}/{self.total:,} pages{share}, {rate:,.1f} pages/s, ETA {eta}"


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


async def show_reparse_progress(
    progress: ReparseProgress, *, console: Console, interval: float
) -> None:
    """Show progress until cancelled: a live line on a terminal, plain lines otherwise."""
    if console.is_terminal:
        with Live(Text(progress.line()), console=console, transient=True) as live:
            while True:
                await asyncio.sleep(0.5)
                live.update(Text(progress.line()))
    while True:
        await asyncio.sleep(interval)
        console.print(progress.line(), markup=False, highlight=False, soft_wrap=True)
