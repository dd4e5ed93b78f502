"""The admission gate: decides, once, whether a URL is crawled, and records why not.

Every request — start URLs, spider requests, followed links — passes `Frontier.admit`:
canonical URL → fingerprint → recently seen? → scheme → length → allowed domains → depth →
spider trap (see `is_trap_url`).
Refusals become `Skipped` rows with a `SkipReason`; admitted requests become `Candidate`s
that the storage writer de-duplicates against the `requests` table (the real seen-set, which
survives restarts) and checks against `max_pages` and `max_pages_per_host` before writing
them as `pending`.

The in-memory seen-set is only a bounded cache that spares the database the ~95% of links
that repeat what was just seen; it never decides alone that a URL is new.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final, Generic, TypeVar, final

from yarl import URL

from crawler.errors import SkipReason, SpiderError
from crawler.failures import storable
from crawler.links import canonical_parts, fingerprint, normalise_domain
from crawler.records import Candidate, Skipped
from crawler.settings import Settings
from crawler.spider.base import Spider, callback_of
from crawler.spider.http import Request, RequestBatch

__all__ = ["Frontier", "is_trap_url"]

_RECENT_LIMIT: Final = 200_000
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_Key = TypeVar("_Key", int, str)
_CRAWLABLE_SCHEMES: Final = ("http", "https")
_REPEATED_SEGMENTS: Final = re.compile(r"(/[^/]++(?:/[^/]++){0,7}?)\1\1(?=/|$)")
"""One to eight path segments, then the same segments twice more, ending at a segment's end."""
_TRAP_QUERY_VALUE: Final = 512
"""Longest query parameter value (as written, percent-encoded) that is not taken for a trap."""


def is_trap_url(url: str) -> bool:
    """Return whether a URL has the shape of a spider trap (skip reason `trap`).

    Two rules, both cheap and both about the URL alone (a growing value cannot be seen
    without its parent, so a long one stands in for it):

    - the path repeats a segment, or a sequence of up to 8 segments, three or more times in
      a row: `/a/a/a/`, `/x/y/x/y/x/y` (relative links that resolve ever deeper). Twice is
      not enough (`/2024/05/05/` is an ordinary date); empty segments (`//`) do not count.
    - a query parameter's value is longer than 512 characters as written (session ids or
      state that grow with every page).

    Traps that keep a plausible shape (an endless calendar) are stopped by `max_depth`,
    `max_url_length` and `max_pages_per_host` instead.
    """
    authority = url.find("://")
    start = url.find("/", authority + 3) if authority >= 0 else -1
    if start < 0:
        return False
    path, _, query = url[start:].partition("?")
    if len(query) > _TRAP_QUERY_VALUE and any(
        len(part.partition("=")[2]) > _TRAP_QUERY_VALUE for part in query.split("&")
    ):
        return True
    return path.count("/") >= 3 and _REPEATED_SEGMENTS.search(path) is not None


@final
class Frontier:
    """The one place that decides whether a request is crawled.

    `admit` appends the request to `candidates` or a refusal to `skipped` (the lists of the
    `PageResult` or `Seeds` being built) and returns the skip reason, if any. It raises
    `SpiderError` for a request that is wrong rather than unwanted: an unknown callback or
    `meta` that cannot be stored.
    """

    def __init__(self, settings: Settings, spider: Spider, allowed_domains: Sequence[str]) -> None:
        self._settings = settings
        self._spider = spider
        self._domains = tuple(d for d in (normalise_domain(d) for d in allowed_domains) if d)
        self._suffixes = tuple("." + d for d in self._domains)
        self._known_callbacks: set[str] = set()
        self._recent_fingerprints = _RecentSet[int](_RECENT_LIMIT)
        self._recent_urls = _RecentSet[str](_RECENT_LIMIT // 2)
        self._redirect_claims: dict[int, dict[int, str]] = {}
        """Redirect targets claimed by requests in flight: request id -> fingerprint -> URL."""
        self._too_deep = _RecentSet[int](_RECENT_LIMIT // 4)
        """Fingerprints refused for depth just now: refused again without another row."""

    @property
    def allowed_domains(self) -> tuple[str, ...]:
        """The normalised allowed domains (empty: every host is allowed)."""
        return self._domains

    def is_allowed_host(self, host: str) -> bool:
        """Return whether `host` is one of the allowed domains or a subdomain of one."""
        if not self._domains:
            return True
        return host in self._domains or host.endswith(self._suffixes)

    def redirect_refusal(self, url: str) -> str | None:
        """Return why a redirect to `url` may not be followed (offsite), or None."""
        host = URL(url).raw_host or ""
        return None if self.is_allowed_host(host) else SkipReason.OFFSITE.value

    def redirect_known(self, owner: int, url: str) -> bool:
        """Whether the crawl already knows `url`, a redirect target of request `owner`: then
        the redirect is not followed, and the URL is fetched once, under its own request.
        Otherwise `owner` claims it (another request redirected there meanwhile does not
        fetch it too) until `followed` records it or `release` gives it back."""
        try:
            canonical, _, _ = canonical_parts(url)
        except (ValueError, TypeError, UnicodeError):
            return False
        fp = fingerprint(canonical, "GET")
        claims = self._redirect_claims.get(owner)
        if claims is not None and fp in claims:
            return False  # claimed on an earlier attempt of the same request
        if fp in self._recent_fingerprints or canonical in self._recent_urls:
            return True
        self._recent_fingerprints.add(fp)
        self._recent_urls.add(canonical)
        self._redirect_claims.setdefault(owner, {})[fp] = canonical
        return False

    def followed(self, owner: int, *, depth: int, skipped: list[Skipped]) -> None:
        """Record the redirect targets request `owner` was fetched through, as skipped
        `redirect_target` (their response is that request's page), so that a link to one of
        them later is a duplicate, not a second fetch."""
        for fp, canonical in self._redirect_claims.pop(owner, {}).items():
            host = canonical_parts(canonical)[2]
            reason = SkipReason.REDIRECT_TARGET
            skipped.append(_skipped(canonical, fp, host, reason, depth, owner))

    def release(self, owner: int) -> None:
        """Give back the redirect targets request `owner` claimed but did not reach (it
        failed): a link to one of them may still bring it in."""
        for fp, canonical in self._redirect_claims.pop(owner, {}).items():
            self._recent_fingerprints.discard(fp)
            self._recent_urls.discard(canonical)

    def admit(
        self,
        request: Request,
        *,
        parent_id: int | None,
        candidates: list[Candidate],
        skipped: list[Skipped],
    ) -> SkipReason | None:
        """Check one request; record it as a candidate or as skipped. See the class doc."""
        if request.callback not in self._known_callbacks:
            self._check_callback(request.callback)
        is_get = request.method == "GET"
        recent = self._recent_urls
        if is_get and (request.url in recent.recent or request.url in recent.older):
            return SkipReason.DUPLICATE  # the cheap path for most links (no method call)
        try:
            url, scheme, host = canonical_parts(request.url)
        except (ValueError, TypeError, UnicodeError):
            return self._skip(request, request.url, "", SkipReason.INVALID, parent_id, skipped)
        fp = fingerprint(url, request.method)
        if fp in self._recent_fingerprints:
            return SkipReason.DUPLICATE
        reason: SkipReason | None = None
        if scheme not in _CRAWLABLE_SCHEMES:
            reason = SkipReason.SCHEME
        elif len(url) > self._settings.max_url_length:
            reason = SkipReason.URL_TOO_LONG
        elif not self.is_allowed_host(host):
            reason = SkipReason.OFFSITE
        elif self._settings.max_depth and request.depth > self._settings.max_depth:
            # Not remembered as seen: a shallower path may still reach this URL, and then
            # it is crawled (the writer reopens the stored refusal).
            if fp in self._too_deep:
                return SkipReason.DUPLICATE
            self._too_deep.add(fp)
            skipped.append(_skipped(url, fp, host, SkipReason.DEPTH, request.depth, parent_id))
            return SkipReason.DEPTH
        elif is_trap_url(url):
            reason = SkipReason.TRAP
        if is_get:
            self._recent_urls.add(url)
            if url is not request.url:
                self._recent_urls.add(request.url)
        self._recent_fingerprints.add(fp)
        if reason is not None:
            skipped.append(_skipped(url, fp, host, reason, request.depth, parent_id))
            return reason
        try:
            candidates.append(self._candidate(request, url, fp, host, parent_id))
        except SpiderError:
            # refused for what it carries, not for its URL: a later link to it may be fine
            self._recent_fingerprints.discard(fp)
            self._recent_urls.discard(url)
            self._recent_urls.discard(request.url)
            raise
        return None

    def _candidate(
        self, request: Request, url: str, fp: int, host: str, parent_id: int | None
    ) -> Candidate:
        where = f"request {request.url}"
        if not (type(request.priority) is int and _INT64_MIN <= request.priority <= _INT64_MAX):
            raise SpiderError(f"{where}: priority must be an integer of 64 bits at most")
        return Candidate(
            url=url,
            fingerprint=fp,
            host=host,
            request=request if request.url == url else request.replace(url=url),
            parent_id=parent_id,
            meta_json=_to_json(request.meta, "meta", where),
            headers_json=_to_json(request.headers, "headers", where),
            lastmod=request.lastmod,
        )

    def forget_recent(self) -> None:
        """Empty the cache of URLs seen recently (what the database decides is untouched):
        a reparse does so before each chunk of pages, so that its memory does not grow with
        the links of the pages it has parsed."""
        for seen in (self._recent_fingerprints, self._recent_urls, self._too_deep):
            seen.clear()

    def admit_batch(
        self,
        batch: RequestBatch,
        urls: Sequence[str],
        *,
        parent_id: int | None,
        candidates: list[Candidate],
        skipped: list[Skipped],
    ) -> int:
        """Check `urls`, some or all of a batch's, as `admit` checks requests one by one;
        return how many were refused as duplicates. A URL seen just now costs one set lookup:
        its request is never built.

        Raises:
            SpiderError: the batch's callback does not exist or its `meta` or headers cannot
                be stored (then none of `urls` is admitted).
        """
        if not urls:
            return 0
        self._check_callback(batch.callback)
        where = f"{len(urls)} requests from follow_all ({urls[0]}, ...)"
        _to_json(batch.meta, "meta", where)
        _to_json(batch.headers, "headers", where)
        recent, older = self._recent_urls.recent, self._recent_urls.older
        duplicates = 0
        for url in urls:
            if url in recent or url in older:
                duplicates += 1
                continue
            request = batch.request_for(url)
            refused = self.admit(
                request, parent_id=parent_id, candidates=candidates, skipped=skipped
            )
            if refused is SkipReason.DUPLICATE:
                duplicates += 1
            recent, older = self._recent_urls.recent, self._recent_urls.older  # may have turned
        return duplicates

    def refuse(
        self,
        url: str,
        reason: SkipReason,
        *,
        depth: int,
        parent_id: int | None,
        skipped: list[Skipped],
    ) -> SkipReason:
        """Record a URL the spider chose not to follow (a CrawlSpider link no rule matched)
        as skipped with `reason`; returns DUPLICATE instead when it was seen just now."""
        try:
            canonical, _, host = canonical_parts(url)
        except (ValueError, TypeError, UnicodeError):
            canonical, host = url, ""
        request = Request(canonical, depth=depth)
        return self._skip(request, canonical, host, reason, parent_id, skipped)

    def _skip(
        self,
        request: Request,
        url: str,
        host: str,
        reason: SkipReason,
        parent_id: int | None,
        skipped: list[Skipped],
    ) -> SkipReason:
        fp = fingerprint(url, request.method)
        if fp in self._recent_fingerprints:
            return SkipReason.DUPLICATE
        self._recent_fingerprints.add(fp)
        skipped.append(_skipped(url, fp, host, reason, request.depth, parent_id))
        return reason

    def _check_callback(self, name: str) -> None:
        if name not in self._known_callbacks:
            callback_of(self._spider, name)  # raises SpiderError when it does not exist
            self._known_callbacks.add(name)


def _skipped(
    url: str, fp: int, host: str, reason: SkipReason, depth: int, parent_id: int | None
) -> Skipped:
    return Skipped(
        url=url, fingerprint=fp, host=host, reason=reason, depth=depth, parent_id=parent_id
    )


class _RecentSet(Generic[_Key]):
    """A bounded set of recently seen keys: two generations, the older dropped when full.

    Membership can only say "seen recently"; the database's unique index decides the rest.
    """

    __slots__ = ("_limit", "older", "recent")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.recent: set[_Key] = set()
        self.older: set[_Key] = set()

    def __contains__(self, key: _Key) -> bool:
        return key in self.recent or key in self.older

    def add(self, key: _Key) -> None:
        self.recent.add(key)
        if len(self.recent) >= self._limit:
            self.older, self.recent = self.recent, set()

    def discard(self, key: _Key) -> None:
        self.recent.discard(key)
        self.older.discard(key)

    def clear(self) -> None:
        self.recent = set()
        self.older = set()


def _to_json(value: Mapping[str, object], what: str, where: str) -> str | None:
    """`value` as JSON (None when empty); `where` names the request(s) in the error."""
    if not value:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SpiderError(f"{where}: {what} is not JSON-serialisable: {exc}") from None
    return storable(text)[0]
