"""robots.txt: fetched once per site (scheme, host and port), obeyed, and stored in `robots`.

What a robots.txt answer means follows RFC 9309 and Google's crawler:

- 2xx: the rules (parsed by Protego, the group matched against `user_agent`); a
  `Crawl-delay` of that group, capped at `crawl_delay_max`, becomes the host's least delay.
- 3xx that cannot be followed, 4xx other than 429: there is no robots.txt; all allowed.
- 5xx, 429, a timeout or a broken answer, after the fetcher's retries: the site may be
  hiding a "keep out", so everything is disallowed for `robots_error_cooldown` seconds,
  after which robots.txt is fetched again.
- no server at all (connection refused, unknown host): nothing to obey, and the site's own
  requests fail with that same error, which is the useful thing to record; robots.txt is
  tried again after `robots_error_cooldown` seconds.

Only a real `Disallow` ends a URL as skipped `robots`. A URL refused because robots.txt
could not be fetched is deferred to the end of the cool-down (`retry_at`), when robots.txt is
asked again; after `max_retries` such deferrals it is skipped as `robots_unavailable`.

There is one decision, `RobotsCache.allows(url)`: True, False, or None while the site's
robots.txt is not known. The feeder uses it to skip disallowed requests without fetching
them and to send a single request to a site whose robots.txt is unknown; that request's
worker calls `check()`, which fetches robots.txt first.

Answers are kept in memory only for the hosts crawler.fetch.politeness keeps (`forget` drops
a host's when it leaves memory); a claim that brings a host back, in this run or a resumed
one, hands over its stored answers (`restore`), trusted for at most 24 hours as RFC 9309
allows, instead of fetching them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final, final

from protego import Protego
from yarl import URL

from crawler.errors import SkipReason
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Deferred, Failed
from crawler.fetch.politeness import Clock, Hosts
from crawler.links import host_of
from crawler.records import Claimed, PageResult, RequestState, RobotsRecord, utc_now
from crawler.settings import Settings
from crawler.spider.http import Request

__all__ = ["RobotsCache", "RobotsCheck", "RobotsOutcome", "robots_url"]

logger = logging.getLogger(__name__)

MAX_AGE: Final = 24 * 3600.0
"""Seconds a robots.txt answer is trusted (RFC 9309 §2.4: no more than 24 hours)."""
MAX_BODY: Final = 500 * 1024
"""Bytes of a robots.txt that are parsed (RFC 9309 §2.5: at least 500 KiB)."""


class RobotsOutcome(StrEnum):
    """What a robots.txt fetch decided; the value is what `robots.outcome` stores."""

    RULES = "rules"
    ALLOW_ALL = "allow_all"
    DISALLOW_ALL = "disallow_all"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RobotsCheck:
    """The answer for one URL, and the robots.txt fetched to give it (to be stored)."""

    allowed: bool
    fetched: RobotsRecord | None


@final
@dataclass(frozen=True, slots=True)
class _Entry:
    outcome: RobotsOutcome
    parser: Protego | None
    expires: float
    """Wall-clock time after which robots.txt is fetched again."""


def robots_url(url: str) -> str:
    """Return the robots.txt URL that governs `url` (same scheme, host and port)."""
    return str(URL(url).origin().with_path("/robots.txt"))


@final
class RobotsCache:
    """Every site's robots.txt answer, for one crawl. See the module docstring."""

    def __init__(self, settings: Settings, hosts: Hosts, *, clock: Clock = time.time) -> None:
        self._obey = settings.obey_robots
        self._agent = settings.user_agent
        self._cooldown = settings.robots_error_cooldown
        self._max_deferrals = settings.max_retries
        self._delay_max = settings.crawl_delay_max
        self._hosts = hosts
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._urls: dict[str, list[str]] = {}
        """The robots.txt URLs of each host in `_entries` (one per scheme and port)."""
        self._locks: dict[str, asyncio.Lock] = {}
        """Sites whose robots.txt is being fetched right now."""

    def allows(self, url: str) -> bool | None:
        """Return whether `url` may be fetched, or None if its robots.txt is not known yet."""
        if not self._obey:
            return True
        entry = self._entries.get(robots_url(url))
        if entry is None or entry.expires <= self._clock():
            return None
        return self._decide(entry, url)

    def retry_at(self, url: str) -> float | None:
        """When a URL that robots.txt disallows may be asked about again: the end of the
        cool-down when its site's robots.txt could not be fetched (the refusal is not the
        site's word), or None for a real `Disallow`."""
        entry = self._entries.get(robots_url(url))
        if entry is None or entry.outcome is not RobotsOutcome.DISALLOW_ALL:
            return None
        return entry.expires

    def refused(self, claimed: Claimed, fetched: RobotsRecord | None = None) -> PageResult:
        """The outcome of a claimed request that robots.txt disallows: skipped `robots` for a
        real `Disallow`; when robots.txt could not be fetched, back to pending until the
        cool-down ends (counted as an attempt), then skipped `robots_unavailable`."""
        until = self.retry_at(claimed.request.url)
        result = PageResult(
            request_id=claimed.id,
            url=claimed.request.url,
            state=RequestState.SKIPPED,
            reason=SkipReason.ROBOTS.value,
            attempts=claimed.attempts,
            robots=fetched,
        )
        if until is not None:
            if claimed.attempts < self._max_deferrals:
                result.state, result.reason = RequestState.PENDING, None
                result.attempts, result.not_before = claimed.attempts + 1, until
            else:
                result.reason = SkipReason.ROBOTS_UNAVAILABLE.value
        return result

    async def check(self, url: str, fetcher: Fetcher) -> RobotsCheck:
        """Return whether `url` may be fetched, fetching its robots.txt first if needed."""
        known = self.allows(url)
        if known is not None:
            return RobotsCheck(allowed=known, fetched=None)
        key = robots_url(url)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                entry = self._entries.get(key)
                if entry is not None and entry.expires > self._clock():  # fetched meanwhile
                    return RobotsCheck(allowed=self._decide(entry, url), fetched=None)
                record = await self._fetch(key, fetcher)
                entry = self._remember(record, self._clock())
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]  # a waiter still holding it finds the answer remembered
        return RobotsCheck(allowed=self._decide(entry, url), fetched=record)

    def restore(self, record: RobotsRecord) -> None:
        """Bring back a stored answer (an earlier run's, or a host's that left memory) unless
        one is in memory or it has expired."""
        if not self._obey or record.url in self._entries:
            return
        fetched = datetime.fromisoformat(record.fetched_at).timestamp()
        if fetched + self._ttl(RobotsOutcome(record.outcome), record.status) > self._clock():
            self._remember(record, fetched)

    def forget(self, hosts: list[str]) -> None:
        """Drop the answers of `hosts` from memory (they stay in the `robots` table)."""
        for host in hosts:
            for url in self._urls.pop(host, ()):
                self._entries.pop(url, None)

    def __len__(self) -> int:
        """The number of robots.txt answers in memory."""
        return len(self._entries)

    def _decide(self, entry: _Entry, url: str) -> bool:
        if entry.parser is not None:
            return entry.parser.can_fetch(url, self._agent)
        return entry.outcome is RobotsOutcome.ALLOW_ALL

    def _ttl(self, outcome: RobotsOutcome, status: int | None) -> float:
        """How long an answer holds: failures (no status) only for the cool-down."""
        if outcome is RobotsOutcome.DISALLOW_ALL or status is None:
            return self._cooldown
        return MAX_AGE

    def _remember(self, record: RobotsRecord, fetched: float) -> _Entry:
        outcome = RobotsOutcome(record.outcome)
        parser = Protego.parse(record.body or "") if outcome is RobotsOutcome.RULES else None
        expires = fetched + self._ttl(outcome, record.status)
        if record.url not in self._entries:
            self._urls.setdefault(record.host, []).append(record.url)
        entry = self._entries[record.url] = _Entry(outcome, parser, expires)
        if record.crawl_delay is not None:
            delay = min(record.crawl_delay, self._delay_max)
            if delay < record.crawl_delay:
                logger.warning(
                    "%s asks for Crawl-delay %gs; using crawl_delay_max = %gs",
                    record.url,
                    record.crawl_delay,
                    delay,
                )
            self._hosts.set_crawl_delay(record.host, delay)
        return entry

    async def _fetch(self, url: str, fetcher: Fetcher) -> RobotsRecord:
        outcome = await fetcher.fetch(Request(url))
        status: int | None = None
        body: str | None = None
        crawl_delay: float | None = None
        error: str | None = None
        if isinstance(outcome, Failed):
            error = f"{outcome.error.kind}: {outcome.error.message}"
            # An unfollowable redirect means "unavailable" (RFC 9309 §2.3.1.2); no server at
            # all (refused, unknown host) leaves nothing to obey: the site's own requests
            # will fail the same way and say so. Timeouts and broken answers disallow.
            allowed = outcome.error.kind in ("redirect", "connection")
            result = RobotsOutcome.ALLOW_ALL if allowed else RobotsOutcome.DISALLOW_ALL
        elif isinstance(outcome, Deferred):
            error = "the server asked to retry later (Retry-After)"
            result = RobotsOutcome.DISALLOW_ALL
        elif 200 <= outcome.status < 300:
            status = outcome.status
            body = outcome.body[:MAX_BODY].decode("utf-8", errors="replace")
            crawl_delay = Protego.parse(body).crawl_delay(self._agent)
            result = RobotsOutcome.RULES
        elif outcome.status < 500 and outcome.status != 429:
            status = outcome.status
            error = f"HTTP {status}: no robots.txt, everything allowed"
            result = RobotsOutcome.ALLOW_ALL
        else:
            status = outcome.status
            error = f"HTTP {status} after {outcome.attempts} attempts"
            result = RobotsOutcome.DISALLOW_ALL
        if result is RobotsOutcome.DISALLOW_ALL:
            error = f"{error}; everything disallowed for {self._cooldown:g}s"
            logger.warning("robots.txt %s failed (%s)", url, error)
        return RobotsRecord(
            url=url,
            host=host_of(url),
            fetched_at=utc_now(),
            status=status,
            outcome=result.value,
            crawl_delay=crawl_delay,
            body=body,
            error=error,
        )
