"""The crawl's time series, for watching a crawl (`crawler dashboard`): one `stats_ts` row
every `stats_interval` seconds and a snapshot of the busiest hosts in `host_stats`.

The writer (crawler.store.writer) asks `Sampler.take` for a sample while it builds a batch
and adds the sample's rows to that batch's transaction, so the counts of a `stats_ts` row
(pages, items, errors, bytes) are those of the tables as that transaction commits them; when
no batch comes for a whole interval it writes the sample alone. The host snapshot is what
this process holds in memory: counters of at most `MAX_HOSTS` hosts (the least recently seen
are forgotten) and the politeness state (crawler.fetch.politeness) of those it writes; each
sample upserts at most `HOSTS_PER_SAMPLE` of them, those that changed, busiest first.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, final

from crawler.fetch.politeness import Hosts
from crawler.fetch.throttle import THROTTLE_STATUSES
from crawler.links import host_of
from crawler.records import PageResult, RequestState, utc_now
from crawler.stats import Stats
from crawler.store.bulk import BulkStatement, Script

__all__ = ["HOSTS_PER_SAMPLE", "MAX_HOSTS", "Sample", "Sampler"]

MAX_HOSTS: Final = 5000
"""Hosts whose counters a process keeps (a broad crawl forgets the least recently seen)."""
HOSTS_PER_SAMPLE: Final = 200
"""Most `host_stats` rows one sample writes."""

INSERT_STATS_TS: Final = BulkStatement(
    "INSERT INTO stats_ts (crawl_id, at, elapsed_s, pages, items, errors, failed, skipped, "
    "bytes, in_flight, queued, pages_per_s, items_per_s, errors_per_s, bytes_per_s, "
    "errors_by_kind, skipped_by_reason, statuses) SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, "
    "{7}, {8}, {9}, {10}, {11}, {12}, {13}, {14}, {15}, {16}, {17} FROM {rows} ORDER BY {order}",
    18,
)
UPSERT_HOST_STATS: Final = BulkStatement(
    "INSERT INTO host_stats (crawl_id, host, updated_at, in_flight, delay_s, concurrency, "
    "paused_s, pages, errors, failed, throttled, avg_ms, last_status) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12} "
    "FROM {rows} WHERE true ORDER BY {order} "
    "ON CONFLICT (crawl_id, host) DO UPDATE SET updated_at = excluded.updated_at, "
    "in_flight = excluded.in_flight, delay_s = excluded.delay_s, "
    "concurrency = excluded.concurrency, paused_s = excluded.paused_s, pages = excluded.pages, "
    "errors = excluded.errors, failed = excluded.failed, throttled = excluded.throttled, "
    "avg_ms = excluded.avg_ms, last_status = excluded.last_status",
    13,
)

_THROTTLED_MESSAGE: Final = re.compile(r"HTTP (\d{3})\b")


@dataclass(slots=True)
class _HostCounts:
    """What one host's results added up to in this run."""

    pages: int = 0
    errors: int = 0
    failed: int = 0
    throttled: int = 0
    total_ms: float = 0.0
    last_status: int | None = None


@final
@dataclass(slots=True)
class Sample:
    """The rows of one sample, and the counts the next sample's rates are measured from."""

    at: float
    counts: tuple[int, int, int, int]
    """pages, items, errors, bytes."""
    script: Script = field(default_factory=Script)
    hosts: list[str] = field(default_factory=list)
    """The hosts whose rows it writes."""
    busy: set[str] = field(default_factory=set)
    """Those of them with requests in flight."""


@final
class Sampler:
    """Decides when a sample is due and builds its rows (see the module docstring)."""

    def __init__(
        self,
        *,
        run_id: int,
        stats: Stats,
        interval: float,
        hosts: Hosts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`interval` 0 writes no samples; `hosts` is the crawl's politeness state, for the
        host snapshot's in flight, delay, concurrency and cool-down."""
        self._run_id = run_id
        self._stats = stats
        self._interval = interval
        self._hosts = hosts
        self._clock = clock
        self._last = Sample(at=stats.started, counts=(0, 0, 0, 0))
        self._counts: dict[str, _HostCounts] = {}
        self._changed: dict[str, None] = {}  # ordered: the least recently changed first
        self._busy: set[str] = set()

    def wait(self) -> float | None:
        """Seconds until the next sample is due (0 when it is), None when sampling is off."""
        if self._interval <= 0:
            return None
        return max(0.0, self._last.at + self._interval - self._clock())

    def observe(self, results: Iterable[PageResult]) -> None:
        """Count committed results in their hosts' counters."""
        # Per batch, not per result: each host of the batch becomes the most recently seen
        # (and changed) once, after its results are counted.
        seen: dict[str, _HostCounts] = {}
        for result in results:
            # the host of its snapshot when it has one: the same, without parsing the URL
            host = result.host.host if result.host is not None else host_of(result.url)
            counts = seen.get(host)
            if counts is None:
                stored = self._counts.pop(host, None)
                counts = seen[host] = _HostCounts() if stored is None else stored
            if (page := result.page) is not None:
                counts.pages += 1
                counts.total_ms += page.elapsed_ms
                counts.last_status = page.status
                counts.throttled += page.status in THROTTLE_STATUSES
            if result.errors:
                counts.errors += len(result.errors)
                for error in result.errors:
                    if (status := _THROTTLED_MESSAGE.match(error.message)) is not None:
                        counts.throttled += int(status.group(1)) in THROTTLE_STATUSES
            counts.failed += result.state is RequestState.FAILED
        changed = self._changed
        for host, counts in seen.items():
            self._counts[host] = counts
            changed.pop(host, None)
            changed[host] = None
        while len(self._counts) > MAX_HOSTS:
            forgotten = next(iter(self._counts))
            del self._counts[forgotten]
            changed.pop(forgotten, None)

    def take(self, tally: Stats | None = None, *, force: bool = False) -> Sample | None:
        """The sample to write now (with the counts of `tally`, the batch it is written
        with, on top of the crawl's), or None when none is due. Nothing changes until
        `written` is called with it."""
        wait = self.wait()
        if wait is None or (wait > 0 and not force):
            return None
        now = self._clock()
        stats, batch = self._stats, tally or Stats()
        errors = stats.errors + batch.errors
        skipped = stats.skipped + batch.skipped
        statuses = stats.statuses + batch.statuses
        counts = (
            stats.pages + batch.pages,
            stats.items + batch.items,
            sum(errors.values()),
            stats.bytes_received + batch.bytes_received,
        )
        span = now - self._last.at
        rates = [
            round((new - old) / span, 3) if span > 0 else 0.0
            for new, old in zip(counts, self._last.counts, strict=True)
        ]
        sample = Sample(at=now, counts=counts)
        row = (
            self._run_id,
            utc_now(),
            round(now - stats.started, 3),
            counts[0],
            counts[1],
            counts[2],
            stats.failed + batch.failed,
            sum(skipped.values()),
            counts[3],
            stats.in_flight,
            max(0, stats.pending),
            *rates,
            _json(errors),
            _json(skipped),
            _json(Counter({str(k): v for k, v in statuses.items()})),
        )
        sample.script.add(INSERT_STATS_TS, [row])
        sample.script.add(UPSERT_HOST_STATS, self._host_rows(sample))
        return sample

    def written(self, sample: Sample) -> None:
        """`sample` is committed: the next one is due an interval later."""
        self._last = sample
        for host in sample.hosts:
            self._changed.pop(host, None)
        self._busy = sample.busy

    def _host_rows(self, sample: Sample) -> list[tuple[object, ...]]:
        """The `host_stats` rows of the hosts that changed since the last sample, or whose
        in-flight count may have: busiest first, then the most recently changed."""
        reserved = self._hosts.reservations() if self._hosts is not None else {}
        now = self._hosts.clock() if self._hosts is not None else 0.0
        wanted = list(reserved) + list(self._busy) + list(reversed(self._changed))
        hosts = list(dict.fromkeys(wanted))[:HOSTS_PER_SAMPLE]
        at = utc_now()
        rows: list[tuple[object, ...]] = []
        for host in hosts:
            counts = self._counts.get(host) or _HostCounts()
            state = self._hosts[host] if self._hosts is not None and host in self._hosts else None
            in_flight = reserved.get(host, 0)
            rows.append(
                (
                    self._run_id,
                    host,
                    at,
                    in_flight,
                    None if state is None else round(state.throttle.delay, 3),
                    None if state is None else state.throttle.limit,
                    0.0 if state is None else _paused(state.throttle.blocked_until, now),
                    counts.pages,
                    counts.errors,
                    counts.failed,
                    counts.throttled,
                    round(counts.total_ms / counts.pages, 2) if counts.pages else None,
                    counts.last_status,
                )
            )
            if in_flight:
                sample.busy.add(host)
        sample.hosts = hosts
        return rows


def _paused(blocked_until: float, now: float) -> float:
    """Seconds of cool-down left (a 429 or 503, its `Retry-After`)."""
    return round(max(0.0, blocked_until - now), 3)


def _json(counter: Counter[str]) -> str:
    return json.dumps(dict(sorted((k, v) for k, v in counter.items() if v)))
