"""Crawl counters, the end-of-crawl summary, and the live progress display.

The storage writer counts what it commits, so the summary always agrees with the tables.
On a terminal, progress is a rich live line; otherwise a plain log line every
`progress_interval` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, final

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["Stats", "render_summary", "show_progress"]

logger = logging.getLogger(__name__)


@final
@dataclass(slots=True, kw_only=True)
class Stats:
    """Counters of one crawl run. Mutated in place by the engine and the writer."""

    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    pages: int = 0
    """HTTP responses recorded in `pages`."""
    items: int = 0
    items_by_type: Counter[str] = field(default_factory=Counter)
    items_dropped: Counter[str] = field(default_factory=Counter)
    """Items not stored, by reason: `invalid` (rows in `item_errors`), `duplicate`,
    `process_item` (the spider's `process_item` returned None)."""
    admitted: int = 0
    """New rows in `requests` with state `pending`."""
    done: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Refused URLs by reason, duplicates included (those are counted, not stored)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Rows in `errors` by kind."""
    statuses: Counter[int] = field(default_factory=Counter)
    bytes_received: int = 0
    retries: int = 0
    rescheduled: int = 0
    strings_replaced: int = 0
    """Lone surrogates in what the spider yielded, stored as U+FFFD (UTF-8 cannot hold them)."""
    pending: int = 0
    """Requests waiting in the frontier (this process's view)."""
    in_flight: int = 0
    requeued: int = 0
    """Re-crawl: fetched requests this run set back to pending because they were due."""
    refetched: Counter[str] = field(default_factory=Counter)
    """Re-fetched pages by outcome: `changed` (parsed again), `unchanged` (304 or the same
    body: not parsed), `error` (429 or 5xx: the stored page kept)."""

    def absorb(self, tally: Stats) -> None:
        """Add the counts of `tally` (what one committed write batch changed) to these."""
        self.pages += tally.pages
        self.items += tally.items
        self.items_by_type.update(tally.items_by_type)
        self.items_dropped.update(tally.items_dropped)
        self.admitted += tally.admitted
        self.done += tally.done
        self.failed += tally.failed
        self.skipped.update(tally.skipped)
        self.errors.update(tally.errors)
        self.statuses.update(tally.statuses)
        self.bytes_received += tally.bytes_received
        self.rescheduled += tally.rescheduled
        self.pending += tally.pending
        self.refetched.update(tally.refetched)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (until it finished)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def pages_per_second(self) -> float:
        """Average rate of recorded responses over the run."""
        return self.pages / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as JSON-ready data (what `crawls.stats` stores)."""
        return {
            "pages": self.pages,
            "items": self.items,
            "items_by_type": dict(sorted(self.items_by_type.items())),
            "items_dropped": dict(sorted(self.items_dropped.items())),
            "requests_admitted": self.admitted,
            "requests_done": self.done,
            "requests_failed": self.failed,
            "requests_pending": self.pending,
            "skipped": dict(sorted(self.skipped.items())),
            "errors": dict(sorted(self.errors.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "bytes_received": self.bytes_received,
            "retries": self.retries,
            "rescheduled": self.rescheduled,
            "strings_replaced": self.strings_replaced,
            "requeued": self.requeued,
            "refetched": dict(sorted(self.refetched.items())),
            "duration_s": round(self.elapsed, 3),
            "pages_per_second": round(self.pages_per_second, 1),
        }


def _progress_line(stats: Stats) -> str:
    return (
        f"pages {stats.pages:,} ({stats.pages_per_second:,.1f}/s) · items {stats.items:,} · "
        f"queued {stats.pending:,} · in flight {stats.in_flight} · "
        f"errors {sum(stats.errors.values()):,}"
    )


async def show_progress(stats: Stats, *, console: Console, interval: float) -> None:
    """Show progress until cancelled: a live line on a terminal, log lines otherwise."""
    if console.is_terminal:
        with Live(Text(_progress_line(stats)), console=console, transient=True) as live:
            while True:
                await asyncio.sleep(0.5)
                live.update(Text(_progress_line(stats)))
    while True:
        await asyncio.sleep(interval)
        logger.info("%s", _progress_line(stats))


def render_summary(spider: str, status: str, summary: dict[str, Any]) -> Table:
    """Return the end-of-crawl summary as a rich table."""
    table = Table(title=f"crawl of {spider!r}: {status}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    dropped: dict[str, int] = summary.get("items_dropped", {})
    rows: list[tuple[str, object]] = [
        ("pages", f"{summary['pages']:,}"),
        ("items", _breakdown(summary["items"], summary["items_by_type"])),
        ("items dropped", _breakdown(sum(dropped.values()), dropped)),
        ("requests done", f"{summary['requests_done']:,}"),
        ("requests failed", f"{summary['requests_failed']:,}"),
        ("still pending", f"{summary['requests_pending']:,}"),
        ("skipped", _breakdown(sum(summary["skipped"].values()), summary["skipped"])),
        ("errors", _breakdown(sum(summary["errors"].values()), summary["errors"])),
        ("status codes", ", ".join(f"{k}: {v:,}" for k, v in summary["statuses"].items()) or "-"),
        ("retries", f"{summary['retries']:,}"),
        ("received", f"{summary['bytes_received'] / 1e6:,.1f} MB"),
        ("duration", f"{summary['duration_s']:,.1f} s"),
        ("pages/s", f"{summary['pages_per_second']:,.1f}"),
    ]
    refetched: dict[str, int] = summary.get("refetched", {})
    if summary.get("requeued", 0) or refetched:  # a re-crawl: shown only then
        rows.insert(1, ("re-fetched", _breakdown(sum(refetched.values()), refetched)))
        rows.insert(1, ("re-queued (due)", f"{summary.get('requeued', 0):,}"))
    if replaced := summary.get("strings_replaced", 0):  # rare: shown only when it happened
        rows.insert(3, ("characters replaced", f"{replaced:,} (lone surrogates, as U+FFFD)"))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _breakdown(total: int, parts: dict[str, int]) -> str:
    if not parts:
        return f"{total:,}"
    return f"{total:,} (" + ", ".join(f"{k}: {v:,}" for k, v in parts.items()) + ")"
