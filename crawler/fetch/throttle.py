"""A host's pace as arithmetic, without clocks or I/O: its delay between two requests, its
limit of requests in flight and its cool-down, and how each response moves them
(`Throttle`, within the settings' `ThrottlePolicy`). crawler.fetch.politeness keeps one per
host and feeds it the responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Self, final

from crawler.settings import Settings

__all__ = ["THROTTLE_STATUSES", "Throttle", "ThrottlePolicy"]

THROTTLE_STATUSES: Final = frozenset({429, 503})
"""Statuses that mean "slow down": the host gets a cool-down and a lower pace."""
_ORDINARY_ERRORS: Final = frozenset({404, 410})
"""Error statuses that are a server's ordinary answer to a URL it does not have (a stale
link): their latency counts as a page's, both ways."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottlePolicy:
    """The settings a `Throttle` works within."""

    min_delay: float
    """`delay_per_host`: the delay never goes below it (nor below a host's Crawl-delay)."""
    max_delay: float
    """`autothrottle_max_delay`: the delay never goes above it (unless Crawl-delay is larger)."""
    max_concurrency: int
    """`concurrency_per_host`: the hard cap on the concurrency limit."""
    target_concurrency: float
    """`autothrottle_target_concurrency`: delay = latency / target, on average."""
    adaptive: bool
    """`autothrottle`: adapt the delay and the limit; when off, only cool-downs apply."""
    slowed_delay: float
    """The least delay after a 429/503 or a failure (`backoff_base`)."""
    retry_after_max: float
    """The longest cool-down a `Retry-After` can ask for."""
    randomize: bool = False
    """`randomize_delay`: each start waits the delay times a random factor in [0.5, 1.5)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Return the policy the settings describe."""
        return cls(
            min_delay=settings.delay_per_host,
            max_delay=settings.autothrottle_max_delay,
            max_concurrency=settings.concurrency_per_host,
            target_concurrency=settings.autothrottle_target_concurrency,
            adaptive=settings.autothrottle,
            slowed_delay=settings.backoff_base,
            retry_after_max=settings.retry_after_max,
            randomize=settings.randomize_delay,
        )


@final
class Throttle:
    """The pace of one host: its delay, its concurrency limit and its cool-down.

    Like Scrapy's AutoThrottle, each response pulls the delay halfway towards
    `latency / target_concurrency`; only a success (status < 400, or 404 and 410) may lower
    it. Unlike Scrapy's, a Not Found is a success here: it is no sign of a server in trouble,
    and when a host answers little else (a list of stale URLs), one slow answer among them
    would otherwise set its pace for the rest of the crawl. On top of
    that, additive increase / multiplicative decrease of the concurrency limit: a 429 or 503
    halves the limit, at least doubles the delay and starts a host-wide cool-down (the
    `Retry-After`, else the new delay); a failure without a response (timeout, reset) halves
    the limit only; each success raises the limit by one, up to the cap.

    All methods take the current time as an argument, so the maths can be tested with a fake
    clock. With `adaptive` off, the delay stays at its floor, the limit at the cap, and only
    `Retry-After` cool-downs apply.
    """

    __slots__ = ("blocked_until", "delay", "floor", "limit", "policy")

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self.floor = policy.min_delay
        """The least delay: `delay_per_host`, raised by robots.txt `Crawl-delay`."""
        self.delay = policy.min_delay
        """Seconds between the starts of two requests to this host."""
        self.limit = policy.max_concurrency
        """Requests allowed in flight to this host."""
        self.blocked_until = -math.inf
        """No request may start before this time (a cool-down)."""

    def set_floor(self, seconds: float) -> None:
        """Raise the least delay (a robots.txt `Crawl-delay`); never below `delay_per_host`."""
        self.floor = max(self.policy.min_delay, seconds)
        self.delay = self.clamp(self.delay)

    def on_response(
        self, now: float, latency: float, status: int, retry_after: float | None = None
    ) -> None:
        """Account for one response that took `latency` seconds."""
        policy = self.policy
        if status in THROTTLE_STATUSES:
            if policy.adaptive:
                self._slow_down()
            if retry_after is not None:
                pause = min(retry_after, policy.retry_after_max)
            else:
                pause = self.delay if policy.adaptive else 0.0
            self.blocked_until = max(self.blocked_until, now + pause)
            return
        if not policy.adaptive:
            return
        averaged = (self.delay + latency / policy.target_concurrency) / 2
        if status < 400 or status in _ORDINARY_ERRORS:
            self.delay = self.clamp(averaged)
            self.limit = min(policy.max_concurrency, self.limit + 1)
        else:  # a server error or a refusal is no evidence that the host can go faster
            self.delay = self.clamp(max(self.delay, averaged))

    def on_failure(self, now: float) -> None:
        """Account for an attempt that got no response (timeout, refused, reset): fewer in
        flight. The delay stays: a failure says nothing about the host's response time, and
        the fetcher's retry backoff already waits."""
        if self.policy.adaptive:
            self.limit = max(1, self.limit // 2)

    def _slow_down(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.delay = self.clamp(max(2 * self.delay, self.policy.slowed_delay))

    def clamp(self, delay: float) -> float:
        """`delay` within the floor and `max_delay` (or the floor, when that is larger)."""
        return min(max(delay, self.floor), max(self.policy.max_delay, self.floor))
