"""The rows a write batch adds: what the writer (crawler.store.writer) is handed, turned into
the parameters of the batch's statements (crawler.store.statements), counted as it goes.

`Seeds` carries requests found outside a page's results (start requests, a spill of a
callback's requests); `add_skipped_rows` and `add_result_rows` add the rows of refused
requests and of `PageResult`s (item keys and item errors, pages, links, items, errors, request
states, robots.txt answers) to a `Script`, counting them in a `Stats` that the writer adds to
the crawl's once the transaction is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias, final

import aiosqlite

from crawler.errors import SkipReason
from crawler.records import (
    Candidate,
    DropReason,
    ErrorRecord,
    HostRecord,
    ItemKey,
    PageChange,
    PageRecord,
    PageResult,
    RequestState,
    RobotsRecord,
    Skipped,
)
from crawler.stats import Stats
from crawler.store import statements
from crawler.store.bulk import Script, select_in
from crawler.store.statements import error_row, skipped_row

__all__ = [
    "Batch",
    "KeyLookup",
    "Seeds",
    "add_result_rows",
    "add_skipped_rows",
    "replaced_pages",
    "stored_item_keys",
]


@final
@dataclass(slots=True, kw_only=True)
class Seeds:
    """Start requests (and refused start URLs) to add to the frontier."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    """Start requests that were wrong (unknown callback, bad meta)."""
    committed: asyncio.Future[None] | None = None
    """Resolved once these rows are committed (see `Storage.submit_and_wait`)."""


@final
@dataclass(slots=True)
class Batch:
    """A write batch's messages sorted out, and what every database writes and counts of
    them but the requests admitted (crawler.store.writer, crawler.store.pg_writer)."""

    results: list[PageResult]
    candidates: list[Candidate]
    """Requests found, for the page budgets and the insert."""
    skipped: list[Skipped]
    seed_errors: list[ErrorRecord]
    """Start requests that were wrong."""

    @classmethod
    def of(cls, writes: Sequence[PageResult | Seeds]) -> Batch:
        """The batch of these messages, in their order."""
        batch = cls([], [], [], [])
        for message in writes:
            batch.candidates.extend(message.candidates)
            batch.skipped.extend(message.skipped)
            if isinstance(message, PageResult):
                batch.results.append(message)
            else:
                batch.seed_errors.extend(message.errors)
        return batch

    def lastmods(self) -> list[tuple[object, ...]]:
        """`SET_LASTMOD`'s rows: the sitemap dates of the requests found (after their insert)."""
        return [(c.fingerprint, c.lastmod) for c in self.candidates if c.lastmod]

    def add_refused(
        self, run_id: int, budget_skips: list[tuple[object, ...]], now: str, script: Script
    ) -> None:
        """Add the rows of the requests refused at admission and over a page budget."""
        add_skipped_rows(run_id, self.skipped, now, script)
        script.add(statements.INSERT_REQUEST_SKIPPED, budget_skips)

    def add_seed_errors(self, run_id: int, script: Script, tally: Stats) -> None:
        """Add the rows of the wrong start requests, counted in `tally`."""
        script.add(statements.INSERT_ERROR, [error_row(run_id, None, e) for e in self.seed_errors])
        for error in self.seed_errors:
            tally.errors[error.kind] += 1

    def count_admission(
        self, tally: Stats, *, inserted: int, admitted: int, budget_skips: list[tuple[object, ...]]
    ) -> None:
        """Count in `tally` the requests admitted (new or reopened) of the `inserted` rows
        the insert was given (the others were known), and those refused."""
        tally.admitted += admitted
        tally.pending += admitted
        tally.skipped[SkipReason.DUPLICATE.value] += inserted - admitted
        for skip in self.skipped:
            tally.skipped[skip.reason.value] += 1
        for row in budget_skips:
            tally.skipped[str(row[12])] += 1  # its reason


def add_skipped_rows(run_id: int, skipped: Sequence[Skipped], now: str, script: Script) -> None:
    """Add the rows of refused requests; a redirect's target is an upsert of its own."""
    refused = [skipped_row(run_id, s, now) for s in skipped]
    targets = [row for row in refused if row[4] == SkipReason.REDIRECT_TARGET.value]
    if targets:
        refused = [row for row in refused if row[4] != SkipReason.REDIRECT_TARGET.value]
        script.add(statements.UPSERT_REDIRECT_TARGET, targets)
    script.add(statements.INSERT_SKIPPED, refused)


KeyLookup: TypeAlias = Callable[[list[ItemKey]], Awaitable[set[tuple[str, int]]]]
"""Which of these item keys the database already holds, as (type, key_hash)."""


def replaced_pages(results: Sequence[PageResult]) -> list[tuple[int, str]]:
    """The requests whose stored page a re-fetch replaces, with why (`changed`, or `gone`
    for an error status): their items move to the history first (crawler.store.history)."""
    return [
        (result.request_id, "gone" if page.status >= 400 else "changed")
        for result in results
        if (page := result.page) is not None and page.change is PageChange.CHANGED
    ]


async def add_result_rows(
    stored_keys: KeyLookup,
    run_id: int,
    results: list[PageResult],
    now: str,
    script: Script,
    tally: Stats,
) -> None:
    """Add the rows of a batch's results to `script` (pages, links, items, errors, request
    states, robots answers), counted in `tally`; the item checks before them may query
    the table."""
    if not results:
        return
    await _add_item_checks(stored_keys, run_id, results, now, script, tally)
    links: list[tuple[object, ...]] = []
    items: list[tuple[object, ...]] = []
    errors: list[tuple[object, ...]] = []
    updates: list[tuple[object, ...]] = []
    stats = tally
    fetches = _Fetches()
    for result in results:
        if (page := result.page) is not None:
            fetches.add(run_id, result.request_id, page, stats)
            if result.links:
                links.append((result.request_id, page.final_url, result.links))
        items.extend(
            (run_id, result.request_id, result.url, kind, data, now) for kind, data in result.items
        )
        for kind, _ in result.items:
            stats.items_by_type[kind] += 1
        stats.items += len(result.items)
        errors.extend(error_row(run_id, result.request_id, e) for e in result.errors)
        for error in result.errors:
            stats.errors[error.kind] += 1
        finished = None if result.state is RequestState.PENDING else now
        updates.append(
            (
                result.state.value,
                result.reason,
                result.attempts,
                result.not_before,
                finished,
                result.request_id,
            )
        )
        _count_state(result, stats)
    fetches.add_to(script)
    script.add(statements.INSERT_LINK, links)
    script.add(statements.INSERT_ITEM, items)
    script.add(statements.INSERT_ERROR, errors)
    script.add(statements.FINISH_REQUEST, updates)
    robots = [_robots_row(run_id, r.robots) for r in results if r.robots is not None]
    script.add(statements.UPSERT_ROBOTS, robots)
    script.add(statements.UPSERT_HOST, _HostRows(results).rows(now))


_HOST_ERROR_KINDS: Final = frozenset({"timeout", "connection", "protocol", "http_status"})
"""The error kinds counted in `hosts.errors`: attempts the host did not answer well."""


@final
class _HostRows:
    """A batch's `UPSERT_HOST` rows: one per host (PostgreSQL refuses to update a row twice
    in one statement), adding up the pages and errors and keeping the latest state."""

    __slots__ = ("_cookies", "_counts", "_latest")

    def __init__(self, results: list[PageResult]) -> None:
        self._latest: dict[str, HostRecord] = {}
        self._counts: dict[str, tuple[int, int]] = {}
        self._cookies: dict[str, str] = {}  # the latest that changed (None: unchanged)
        for result in results:
            if (host := result.host) is None:
                continue
            fetched, errors = self._counts.get(host.host, (0, 0))
            fetched += result.page is not None
            if result.errors:  # rare: no generator for the rest
                errors += sum(1 for e in result.errors if e.kind in _HOST_ERROR_KINDS)
            self._counts[host.host] = (fetched, errors)
            self._latest[host.host] = host
            if host.cookies is not None:
                self._cookies[host.host] = host.cookies

    def rows(self, now: str) -> list[tuple[object, ...]]:
        return [
            (
                name,
                *self._counts[name],
                host.crawl_delay,
                host.throttle_delay,
                host.throttle_concurrency,
                host.not_before,
                host.last_status,
                now,
                self._cookies.get(name),
            )
            for name, host in self._latest.items()
        ]


@dataclass(slots=True)
class _Fetches:
    """A batch's rows of `pages` and `fetches` (and of the pages re-fetches left unchanged)."""

    pages: list[tuple[object, ...]] = field(default_factory=list)
    of_pages: list[tuple[object, ...]] = field(default_factory=list)
    rows: list[tuple[object, ...]] = field(default_factory=list)
    exchanges: list[tuple[object, ...]] = field(default_factory=list)
    touched: list[tuple[object, ...]] = field(default_factory=list)

    def add(self, run_id: int, request_id: int, page: PageRecord, stats: Stats) -> None:
        """Add the rows of one response, counted in `stats`: its fetch, and its page or the
        touch of the stored one."""
        stats.pages += 1
        stats.statuses[page.status] += 1
        stats.bytes_received += page.size_bytes
        change = page.change
        if change is not PageChange.NEW:
            stats.refetched[change.value] += 1
        content = change is PageChange.NEW or change is PageChange.CHANGED
        if content:
            self.pages.append(_page_row(run_id, request_id, page))
            if page.exchange is None:
                # The common case, every page of a first crawl: its fetch is copied from
                # the page's row in SQL (`INSERT_FETCH_OF_PAGE`), not sent a second time.
                self.of_pages.append((request_id, int(page.conditional)))
                return
        elif change is PageChange.UNCHANGED:
            self.touched.append(
                (
                    request_id,
                    run_id,
                    page.fetched_at,
                    page.elapsed_ms,
                    page.etag,
                    page.last_modified,
                )
            )
        row = (
            request_id,
            run_id,
            page.final_url,
            page.status,
            page.size_bytes,
            page.body_hash,
            int(content),
            int(page.conditional),
            page.elapsed_ms,
            page.fetched_at,
        )
        if page.exchange is None:
            self.rows.append(row)
        else:
            self.exchanges.append((*row, *page.exchange))

    def add_to(self, script: Script) -> None:
        script.add(statements.INSERT_PAGE, self.pages)
        script.add(statements.TOUCH_PAGE, self.touched)
        script.add(statements.INSERT_FETCH_OF_PAGE, self.of_pages)  # after INSERT_PAGE
        script.add(statements.INSERT_FETCH, self.rows)
        script.add(statements.INSERT_FETCH_EXCHANGE, self.exchanges)


def _page_row(run_id: int, request_id: int, page: PageRecord) -> tuple[object, ...]:
    """The `INSERT_PAGE` row of a fetched page (its body is set after the script)."""
    return (
        request_id,
        run_id,
        page.url,
        page.final_url,
        page.status,
        page.content_type,
        page.encoding,
        page.size_bytes,
        page.depth,
        page.elapsed_ms,
        page.fetched_at,
        page.etag,
        page.last_modified,
        page.body_hash,
    )


def _robots_row(run_id: int, robots: RobotsRecord) -> tuple[object, ...]:
    """The `UPSERT_ROBOTS` row of a robots.txt answer fetched for a result."""
    return (
        robots.url,
        robots.host,
        robots.fetched_at,
        robots.status,
        robots.outcome,
        robots.crawl_delay,
        robots.body,
        robots.error,
        run_id,
    )


def _count_state(result: PageResult, stats: Stats) -> None:
    """Count the request's final state (or its rescheduling)."""
    if result.state is RequestState.DONE:
        stats.done += 1
    elif result.state is RequestState.FAILED:
        stats.failed += 1
    elif result.state is RequestState.PENDING:
        stats.rescheduled += 1
    elif result.state is RequestState.SKIPPED:  # robots.txt, learnt after admission
        stats.skipped[result.reason or "skipped"] += 1
    if result.state is not RequestState.PENDING:
        stats.pending -= 1


async def _add_item_checks(
    stored_keys: KeyLookup,
    run_id: int,
    results: list[PageResult],
    now: str,
    script: Script,
    tally: Stats,
) -> None:
    """Drop items whose de-duplication key is already stored (by an earlier batch or run,
    or earlier in this batch) and store the new keys; write refused items to `item_errors`.
    Runs first, so everything after it sees only the items that are kept."""
    stats = tally
    keys = [key for result in results for key in result.item_keys.values()]
    seen = await stored_keys(keys) if keys else set()
    key_rows: list[tuple[object, ...]] = []
    error_rows: list[tuple[object, ...]] = []
    for result in results:
        run, request = run_id, result.request_id
        error_rows.extend(
            (run, request, e.url, e.callback, e.item_type, e.field, e.message, e.data, now)
            for e in result.item_errors
        )
        if result.item_keys:
            kept: list[tuple[str, str]] = []
            for index, item in enumerate(result.items):
                if (key := result.item_keys.get(index)) is not None:
                    if (key.type, key.key_hash) in seen:
                        stats.items_dropped[DropReason.DUPLICATE.value] += 1
                        continue
                    seen.add((key.type, key.key_hash))
                    key_rows.append((key.type, key.key_hash, key.key, run_id, now, request))
                kept.append(item)
            result.items, result.item_keys = kept, {}
        stats.items_dropped.update(reason.value for reason in result.dropped)
        if result.item_errors:
            stats.items_dropped[DropReason.INVALID.value] += len(result.item_errors)
    script.add(statements.INSERT_ITEM_KEY, key_rows)
    script.add(statements.INSERT_ITEM_ERROR, error_rows)


async def stored_item_keys(conn: aiosqlite.Connection, keys: list[ItemKey]) -> set[tuple[str, int]]:
    """The keys among `keys` that the SQLite file holds (a `KeyLookup`)."""
    by_type: dict[str, set[int]] = {}
    for key in keys:
        by_type.setdefault(key.type, set()).add(key.key_hash)
    sql = "SELECT key_hash FROM item_keys WHERE type = ? AND key_hash IN ({marks})"
    found: set[tuple[str, int]] = set()
    for type_name, hashes in by_type.items():
        rows = await select_in(conn, sql, sorted(hashes), params=(type_name,))
        found.update((type_name, int(row[0])) for row in rows)
    return found
