"""All HTTP: one aiohttp session, a semaphore on every fetch, timeouts, redirects and
retries (tenacity); the outcomes are in crawler.fetch.outcomes, each hop's checks in
crawler.fetch.redirects, reading a body (size cap, errors) in crawler.fetch.responses.

Every new connection goes through `GuardedConnector` (crawler.fetch.addresses), which refuses
internal addresses the crawl may not reach; a redirect to another origin drops the request's
credential headers. Each hop gets the User-Agent, headers and timeouts of its host's per-site
settings (crawler.fetch.hop_settings).

`Fetcher.fetch` returns a value for every outcome: `Fetched` (a response was received, maybe
an error status), `Failed` (no usable response after retries) or `Deferred` (a long
`Retry-After`: the request goes back to the frontier with a not-before time instead of
parking a worker). Backoff sleeps happen outside the semaphore.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, final

import aiohttp
from aiohttp.abc import AbstractResolver
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from yarl import URL

from crawler.bodies import SUPPORTED_ENCODINGS
from crawler.errors import (
    ConnectError,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    PrivateAddressError,
    ProtocolError,
    RedirectError,
)
from crawler.fetch.addresses import AddressPolicy, AddressRefused, GuardedConnector, start_urls_of
from crawler.fetch.cookies import HostCookies, requesting
from crawler.fetch.deadlines import Deadlines
from crawler.fetch.hop_settings import HopSettings
from crawler.fetch.outcomes import (
    Deferred,
    Failed,
    Fetched,
    FetchOutcome,
    failure_record,
    parse_retry_after,
)
from crawler.fetch.politeness import Hosts
from crawler.fetch.redirects import (
    REDIRECT_STATUSES,
    RedirectCheck,
    RedirectGate,
    method_after,
    redirect_target,
    same_origin,
    without_credentials,
)
from crawler.fetch.responses import read_body, translate_errors
from crawler.host_rules import largest
from crawler.links import host_of
from crawler.records import ErrorRecord
from crawler.settings import Settings
from crawler.spider.http import Request

if TYPE_CHECKING:
    from crawler.spider.base import Spider

__all__ = ["Fetcher"]

logger = logging.getLogger(__name__)

_DEADLINE_SWEEP: Final = 0.25
"""Seconds between two looks at the deadlines of the attempts in flight (less for short
timeouts): a deadline due before the look after next gets a timer of its own, so timeouts
fire on time and the other attempts arm none (crawler.fetch.deadlines)."""
_APPROVED_ORIGINS_LIMIT: Final = 10_000
"""Origins remembered as allowed, then forgotten all at once: a broad crawl meets a new origin
with almost every host, and checking a forgotten one again costs a DNS cache lookup."""


class _RetryableStatus(Exception):
    """Internal: a retryable status, carrying the response for when retries run out."""

    def __init__(self, error: HTTPStatusError, response: Fetched) -> None:
        super().__init__(str(error))
        self.error = error
        self.response = response


@final
class Fetcher:
    """The crawl's HTTP client. Use as `async with Fetcher(settings, check) as fetcher:`.

    `start_urls` are the URLs the crawl starts from: the classes of internal address they
    resolve to may be fetched (see crawler.fetch.addresses). Without them (None), every URL handed
    to `fetch` counts as one, as for a one-off fetch of a URL the user gave; its redirects are
    still checked. `resolver` and `connector_class` let tests put a fake DNS and a
    loopback-only layer around the guard.
    """

    def __init__(
        self,
        settings: Settings,
        redirect_check: RedirectCheck,
        *,
        hosts: Hosts | None = None,
        start_urls: Iterable[str] | None = None,
        resolver: AbstractResolver | None = None,
        connector_class: type[GuardedConnector] = GuardedConnector,
    ) -> None:
        self._settings = settings
        self._redirect_check = redirect_check
        self._hosts = hosts if hosts is not None else Hosts(settings)
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._deadlines = Deadlines(resolution=min(_DEADLINE_SWEEP, settings.request_timeout / 20))
        self._retry_statuses = frozenset(settings.retry_statuses)
        # whether some requests get other headers or timeouts than the session's
        self._hop = HopSettings(settings)
        self._policy = AddressPolicy(allow_all=settings.allow_private_addresses)
        self._trust_direct = start_urls is None
        if start_urls is not None:
            self._policy.add_start_urls(start_urls)
        self._approved_origins: set[str] = set()
        """Origins whose host `address_refusal` found allowed (the connection checks again)."""
        self.cookies = HostCookies()
        """The session's cookies, of the hosts in memory only (crawler.fetch.cookies)."""
        self._connector = connector = connector_class(
            policy=self._policy,
            resolver=resolver,
            limit=settings.concurrency,
            limit_per_host=largest(
                settings.host_rules, "concurrency_per_host", settings.concurrency_per_host
            ),
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The whole attempt is bounded by `request_timeout` in `_fetch_once`; a read
            # timeout as well would only re-arm a timer on every chunk received.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
            auto_decompress=False,
            headers={"User-Agent": settings.user_agent, "Accept-Encoding": SUPPORTED_ENCODINGS},
            cookie_jar=self.cookies,
            max_line_size=16 * 1024,
            max_field_size=16 * 1024,
        )

    async def __aenter__(self) -> Self:
        await self._deadlines.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._session.close()
        finally:
            await self._deadlines.__aexit__(exc_type, exc, tb)

    def forget(self, hosts: list[str]) -> None:
        """`hosts` left memory (the crawl has no work for them): close the pool's idle
        connections to them and drop their cookies (kept in their `hosts` rows)."""
        self._connector.close_idle(hosts)
        self.cookies.forget(hosts)

    @property
    def start_urls_known(self) -> bool:
        """Whether the crawl's start URLs were given (see the class doc)."""
        return not self._trust_direct

    def start_from(self, spider: Spider) -> None:
        """Give a fetcher made without start URLs those of the crawl's spider (`start_urls`,
        a SitemapSpider's `sitemap_urls`); from then on, being handed to `fetch` earns a URL
        no trust."""
        self._trust_direct = False
        self._policy.add_start_urls(start_urls_of(spider))

    async def address_refusal(self, request: Request, *, attempts_before: int = 0) -> Failed | None:
        """Return a `private_address` failure if the request's host resolves to an address the
        crawl may not reach, before anything is sent (robots.txt included); else None.

        An early answer only: each connection is checked again on the addresses it uses. A
        host that cannot be resolved, or not within `connect_timeout`, is left for the fetch
        to report (aiohttp's DNS cache lets that fetch share a resolution still running).
        """
        if self._policy.allow_all:
            return None
        url = request.url
        origin = _origin_prefix(url)
        if origin in self._approved_origins:
            return None
        try:
            parsed = URL(url, encoded=True)
            host, port = parsed.raw_host, parsed.port
            if host is None or port is None:
                return None
            with self._deadlines.limit(self._settings.for_host(host).connect_timeout):
                await self._connector.check(host, port)
        except AddressRefused as refused:
            error = PrivateAddressError(url, str(refused))
            attempt = attempts_before + 1
            failures = [failure_record(url, error, attempt)]
            return Failed(error=error, attempts=attempt, failures=failures)
        except (OSError, aiohttp.ClientError, ValueError):  # TimeoutError is an OSError
            return None
        if len(self._approved_origins) >= _APPROVED_ORIGINS_LIMIT:
            self._approved_origins.clear()
        self._approved_origins.add(origin)
        return None

    async def fetch(
        self, request: Request, *, attempts_before: int = 0, known: RedirectGate | None = None
    ) -> FetchOutcome:
        """Fetch a request, retrying retryable failures with backoff; never raises FetchError.

        The first attempt runs on its own, since most requests need no other; a retryable
        failure sleeps its backoff and hands the remaining attempts to tenacity. With
        `known`, a redirect to a URL the crawl already knows is not followed (one fetch per
        URL): the 3xx response is returned as it is.
        """
        if self._trust_direct:
            self._policy.add_start_urls((request.url,))
        requesting(host_of(request.url))  # the cookies its redirects' targets set are its own
        failures: list[ErrorRecord] = []
        budget = max(1, self._settings.max_retries + 1 - attempts_before)
        attempts = attempts_before + 1
        try:
            try:
                return await self._attempt(
                    request, attempts, failures, is_last=budget == 1, known=known
                )
            except (FetchError, _RetryableStatus) as first:
                if budget == 1 or not self._is_retryable(first):
                    raise
                delay = self._backoff_delay(first, 1)
                _log_retry(first, 1, delay)
                await asyncio.sleep(delay)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(budget - 1),
                wait=lambda state: self._backoff_delay(_exception(state), state.attempt_number + 1),
                retry=retry_if_exception(self._is_retryable),
                before_sleep=lambda state: _log_retry(
                    _exception(state),
                    state.attempt_number + 1,
                    state.next_action.sleep if state.next_action else 0.0,
                ),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    is_last = attempts - attempts_before >= budget
                    return await self._attempt(
                        request, attempts, failures, is_last=is_last, known=known
                    )
        except _RetryableStatus as exhausted:
            return exhausted.response
        except _DeferRequest as defer:
            return Deferred(not_before=defer.not_before, attempts=attempts, failures=failures)
        except FetchError as error:
            return Failed(error=error, attempts=attempts, failures=failures)
        raise AssertionError("unreachable: tenacity either returns or reraises")  # pragma: no cover

    async def _attempt(
        self,
        request: Request,
        attempt: int,
        failures: list[ErrorRecord],
        *,
        is_last: bool,
        known: RedirectGate | None,
    ) -> Fetched:
        """One attempt. A failure without a response is added to `failures` and raised; an
        error status is added too, and a retryable one raised so that tenacity retries it,
        or deferred to the frontier when its Retry-After is long."""
        try:
            response = await self._fetch_once(request, known)
        except FetchError as failure:
            failures.append(failure_record(request.url, failure, attempt))
            raise
        response.attempts = attempt
        response.failures = failures
        if response.status < 400:
            return response
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            retry_after = min(retry_after, self._settings.retry_after_max)
        error = HTTPStatusError(response.url, response.status, retry_after)
        failures.append(failure_record(request.url, error, attempt))
        if response.status not in self._retry_statuses:
            return response
        if (
            not is_last
            and retry_after is not None
            and retry_after > self._settings.retry_after_inline
        ):
            raise _DeferRequest(time.time() + retry_after)
        raise _RetryableStatus(error, response)

    def _is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, _RetryableStatus):
            return True
        return isinstance(exc, FetchTimeout | ConnectError | ProtocolError)

    def _backoff_delay(self, exc: BaseException | None, attempt_number: int) -> float:
        """Seconds to wait after failed attempt `attempt_number` (1 for the first): the
        Retry-After when the server sent one, else exponential backoff with full jitter."""
        if isinstance(exc, _RetryableStatus) and exc.error.retry_after is not None:
            return exc.error.retry_after
        base = self._settings.backoff_base * 2 ** (attempt_number - 1)
        return min(self._settings.backoff_max, random.uniform(base / 2, base * 1.5))

    async def _fetch_once(self, request: Request, known: RedirectGate | None = None) -> Fetched:
        """One attempt, redirects included, holding its host's slot (which waits for the
        host's delay and reports the response to its throttle) and a semaphore permit."""
        timeout = self._hop.request_timeout(request.url)
        async with self._hosts.slot(request.url) as slot, self._semaphore:
            started = time.monotonic()
            with translate_errors(request.url), self._deadlines.limit(timeout):
                url, response, body, hops = await self._follow_redirects(request, known)
            status, headers = response.status, response.headers
            retry_after = parse_retry_after(headers.get("Retry-After"))
            slot.responded(status, retry_after)
            version = response.version
            return Fetched(
                url=url,
                status=status,
                headers=headers,
                body=body,
                elapsed_ms=(time.monotonic() - started) * 1000,
                attempts=0,
                redirects=hops,
                http_version=f"{version.major}.{version.minor}" if version else "1.1",
                reason=response.reason or "",
                request_headers=response.request_info.headers,
                raw_headers=response.raw_headers,
            )

    async def _follow_redirects(
        self, request: Request, known: RedirectGate | None
    ) -> tuple[str, aiohttp.ClientResponse, bytes, list[str]]:
        url = request.url
        method = request.method
        headers = request.headers or None
        visited = {url}
        hops: list[str] = []
        for hop in range(self._settings.max_redirects + 1):
            try:
                response = await self._session.request(
                    method,
                    URL(url, encoded=True),
                    allow_redirects=False,
                    **self._hop.arguments(url, headers),
                )
            except AddressRefused as refused:
                where = f"redirect to {url}: " if hop else ""
                raise PrivateAddressError(request.url, f"{where}{refused}") from None
            async with response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    target = redirect_target(url, location, visited, self._redirect_check)
                    if known is not None and known(target):
                        # fetched (or to be fetched) under its own request: not twice
                        body = await read_body(url, response, self._settings.max_size)
                        return url, response, body, hops
                    hops.append(target)
                    if headers and not same_origin(url, target):
                        # Once dropped they stay dropped, even if a later hop comes back:
                        # the other origin chose where that hop goes.
                        headers = without_credentials(headers)
                    url = target
                    visited.add(url)
                    method = method_after(response.status, method)
                    continue
                body = await read_body(url, response, self._settings.max_size)
                return url, response, body, hops
        raise RedirectError(request.url, f"more than {self._settings.max_redirects} redirects")


class _DeferRequest(Exception):
    """Internal: stop retrying in the worker; the frontier will retry after `not_before`."""

    def __init__(self, not_before: float) -> None:
        super().__init__(f"deferred until {not_before}")
        self.not_before = not_before


def _origin_prefix(url: str) -> str:
    """`scheme://host:port` as written at the start of a URL (no parsing: called per request)."""
    end = url.find("/", url.find("//") + 2)
    return url if end < 0 else url[:end]


def _exception(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _log_retry(exc: BaseException | None, attempt_number: int, sleep: float) -> None:
    logger.info("retrying after %s (attempt %d, waiting %.2fs)", exc, attempt_number, sleep)
