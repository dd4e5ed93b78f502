"""The statements a write batch runs (crawler.store.writer), and the rows some of them take.

Each `BulkStatement` writes a whole table's share of a batch in one statement (crawler.store.bulk).

`requests` holds one row per fingerprint: triggers drop a row whose fingerprint the file
already holds (but for a URL refused for depth, which a pending request reopens), and look
fingerprints up in their set (crawler.store.fingerprints), so the inserts here are plain
`INSERT`s, and what was an update on conflict is an update of the rows `request_id_of`
finds, before the insert.
"""

from __future__ import annotations

from typing import Final

from crawler.failures import storable
from crawler.records import ErrorRecord, Skipped
from crawler.store.bulk import BulkStatement
from crawler.store.fingerprints import request_id_of

__all__ = [
    "ADMITTED_COUNT",
    "COUNT_ADMITTED_AFTER",
    "COUNT_ADMITTED_BEFORE",
    "CREATE_ADMITTED_COUNT",
    "FINISH_REQUEST",
    "INSERT_ERROR",
    "INSERT_FETCH",
    "INSERT_FETCH_EXCHANGE",
    "INSERT_FETCH_OF_PAGE",
    "INSERT_ITEM",
    "INSERT_ITEM_ERROR",
    "INSERT_ITEM_KEY",
    "INSERT_LINK",
    "INSERT_PAGE",
    "INSERT_REQUEST",
    "INSERT_REQUEST_SKIPPED",
    "INSERT_SKIPPED",
    "SET_LASTMOD",
    "SET_PAGE_BODY",
    "TAKE_ADMITTED_COUNT",
    "TOUCH_PAGE",
    "UPSERT_HOST",
    "UPSERT_REDIRECT_TARGET",
    "UPSERT_ROBOTS",
    "error_row",
    "skipped_row",
]


def skipped_row(run_id: int, skip: Skipped, now: str) -> tuple[object, ...]:
    """The `INSERT_SKIPPED` row of a refused request (its URL as written, which may hold text
    SQLite cannot: an invalid URL is recorded all the same)."""
    return (
        storable(skip.url)[0],
        skip.fingerprint,
        storable(skip.host)[0],
        skip.depth,
        skip.reason.value,
        skip.parent_id,
        run_id,
        now,
        now,
    )


def error_row(run_id: int, request_id: int | None, error: ErrorRecord) -> tuple[object, ...]:
    """The `INSERT_ERROR` row of an error."""
    return (
        run_id,
        request_id,
        error.url,
        error.kind,
        error.message,
        error.attempt,
        error.callback,
        error.created_at,
    )


_REQUEST_COLUMNS: Final = (
    "url, fingerprint, host, method, callback, headers, meta, depth, priority, parent_id, "
    "crawl_id, discovered_at"
)
INSERT_REQUEST: Final = BulkStatement(
    f"INSERT INTO requests ({_REQUEST_COLUMNS}, state) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, 'pending' "
    # `WHERE true`: no one-row form (executemany), one JSON parameter is cheaper here
    "FROM {rows} WHERE true ORDER BY {order}",
    12,
)
"""New requests (rows as `Budgets.admit` returns them); a row the table holds is kept (the
trigger drops the new one), unless it was refused for depth: the trigger makes it pending
again, as found this time (crawler.store.fingerprints). What it admitted is what
`frontier_counts` gained (`ADMITTED_COUNT`)."""
INSERT_REQUEST_SKIPPED: Final = BulkStatement(
    f"INSERT INTO requests ({_REQUEST_COLUMNS}, state, reason, finished_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, 'skipped', {12}, {13} "
    "FROM {rows} ORDER BY {order}",
    14,
)
"""Requests refused for a run's budget: stored whole (callback, meta, headers, priority), so
that a later run that reopens them fetches them exactly as first asked."""
CREATE_ADMITTED_COUNT: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS batch_admitted (admitted INTEGER NOT NULL)"
)
ADMITTED_COUNT: Final = "SELECT admitted FROM frontier_counts"
"""Requests admitted (not skipped) in the file, as triggers keep the count."""
COUNT_ADMITTED_BEFORE: Final = (
    "INSERT INTO temp.batch_admitted (admitted) SELECT -admitted FROM frontier_counts"
)
COUNT_ADMITTED_AFTER: Final = (
    "INSERT INTO temp.batch_admitted (admitted) SELECT admitted FROM frontier_counts"
)
"""Around `INSERT_REQUEST` in a one-call batch: the rows it admitted, new or reopened, are
the sum of the two (`TAKE_ADMITTED_COUNT`)."""
TAKE_ADMITTED_COUNT: Final = "DELETE FROM temp.batch_admitted RETURNING admitted"
INSERT_SKIPPED: Final = BulkStatement(
    "INSERT INTO requests (url, fingerprint, host, depth, state, reason, parent_id, "
    "crawl_id, discovered_at, finished_at) "
    "SELECT {0}, {1}, {2}, {3}, 'skipped', {4}, {5}, {6}, {7}, {8} FROM {rows} ORDER BY {order}",
    9,
)
UPSERT_REDIRECT_TARGET: Final = BulkStatement(
    "INSERT INTO requests (url, fingerprint, host, depth, state, reason, parent_id, "
    "crawl_id, discovered_at, finished_at) "
    "SELECT {0}, {1}, {2}, {3}, 'skipped', {4}, {5}, {6}, {7}, {8} FROM {rows} ORDER BY {order}",
    9,
    # Pending and not claimed: its response is in hand, so it is not fetched again.
    update_first="UPDATE requests SET state = 'skipped', "
    "reason = json_extract(found.row, '$[4]'), finished_at = json_extract(found.row, '$[8]') "
    f"FROM (SELECT {request_id_of('{1}')} AS id, {{row}} AS row FROM {{rows}}) AS found "
    "WHERE requests.id = found.id AND requests.state = 'pending' "
    "AND requests.lease_owner IS NULL",
)
"""Redirect targets a request was fetched through (`skipped_row`s, reason `redirect_target`)."""
_PAGE_COLUMNS: Final = (
    "request_id, crawl_id, url, final_url, status, content_type, encoding, size_bytes, depth, "
    "elapsed_ms, fetched_at, etag, last_modified, body_hash"
)
INSERT_PAGE: Final = BulkStatement(
    f"INSERT INTO pages ({_PAGE_COLUMNS}) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13} "
    "FROM {rows} WHERE true ORDER BY {order} "
    # A re-fetch whose content changed replaces the request's page (crawler.engine.recrawl).
    "ON CONFLICT (request_id) DO UPDATE SET crawl_id = excluded.crawl_id, url = excluded.url, "
    "final_url = excluded.final_url, status = excluded.status, "
    "content_type = excluded.content_type, encoding = excluded.encoding, "
    "size_bytes = excluded.size_bytes, depth = excluded.depth, "
    "elapsed_ms = excluded.elapsed_ms, fetched_at = excluded.fetched_at, "
    "etag = excluded.etag, last_modified = excluded.last_modified, "
    "body_hash = excluded.body_hash, body = NULL",
    14,
)
"""A request's page: new, or replacing the one a re-fetch found changed."""
TOUCH_PAGE: Final = BulkStatement(
    "UPDATE pages SET crawl_id = {1}, fetched_at = {2}, elapsed_ms = {3}, "
    "etag = coalesce({4}, pages.etag), last_modified = coalesce({5}, pages.last_modified) "
    "FROM {rows} WHERE pages.request_id = {0}",
    6,
)
"""A re-fetch that found the page unchanged: only the time of the fetch (and validators a
304 may renew) change."""
_FETCH_COLUMNS: Final = (
    "request_id, crawl_id, url, status, size_bytes, body_hash, changed, conditional, "
    "elapsed_ms, fetched_at"
)
INSERT_FETCH: Final = BulkStatement(
    f"INSERT INTO fetches ({_FETCH_COLUMNS}) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9} FROM {rows} ORDER BY {order}",
    10,
)
INSERT_FETCH_OF_PAGE: Final = BulkStatement(
    f"INSERT INTO fetches ({_FETCH_COLUMNS}) "
    "SELECT page.request_id, page.crawl_id, page.final_url, page.status, page.size_bytes, "
    "page.body_hash, 1, {1}, page.elapsed_ms, page.fetched_at "
    "FROM {rows} JOIN pages AS page ON page.request_id = {0} ORDER BY {order}",
    2,
)
"""The fetch of a page `INSERT_PAGE` just wrote (new or changed content, without the status
line and headers): (request_id, conditional) rows, the rest copied from the page's row."""
INSERT_FETCH_EXCHANGE: Final = BulkStatement(
    f"INSERT INTO fetches ({_FETCH_COLUMNS}, http_version, reason, headers, request_headers) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13} "
    "FROM {rows} ORDER BY {order}",
    14,
)
"""`INSERT_FETCH` with the status line and headers (crawls with `store_body`)."""
SET_LASTMOD: Final = BulkStatement(
    "UPDATE requests SET lastmod = found.lastmod, "
    # A sitemap dates the page after its last fetch: it is fetched again (attempts anew).
    "attempts = CASE WHEN state IN ('done', 'failed') AND found.lastmod > finished_at THEN 0 "
    "ELSE attempts END, "
    "state = CASE WHEN state IN ('done', 'failed') AND found.lastmod > finished_at "
    "THEN 'pending' ELSE state END "
    f"FROM (SELECT {request_id_of('{0}')} AS id, {{1}} AS lastmod FROM {{rows}}) AS found "
    "WHERE requests.id = found.id",
    2,
)
"""The sitemap `<lastmod>` of requests (after their insert): a fetched one that the sitemap
dates later than its last fetch is pending again."""
SET_PAGE_BODY: Final = "UPDATE pages SET body = ? WHERE request_id = ?"
INSERT_LINK: Final = BulkStatement(
    "INSERT INTO links (page_id, from_url, to_url) SELECT page.id, {1}, link.value "
    "FROM {rows} JOIN pages AS page ON page.request_id = {0} "
    "JOIN json_each({row}, '$[2]') AS link ORDER BY {order}, link.key",
    3,
)
INSERT_ITEM: Final = BulkStatement(
    "INSERT INTO items (crawl_id, request_id, page_url, type, data, created_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5} FROM {rows} ORDER BY {order}",
    6,
)
INSERT_ERROR: Final = BulkStatement(
    "INSERT INTO errors (crawl_id, request_id, url, kind, message, attempt, callback, created_at) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7} FROM {rows} ORDER BY {order}",
    8,
)
INSERT_ITEM_KEY: Final = BulkStatement(
    "INSERT INTO item_keys (type, key_hash, key, crawl_id, created_at, request_id) "
    "SELECT {0}, {1}, {2}, {3}, {4}, {5} FROM {rows} ORDER BY {order}",
    6,
)
INSERT_ITEM_ERROR: Final = BulkStatement(
    "INSERT INTO item_errors (crawl_id, request_id, url, callback, item_type, field, message, "
    "data, created_at) SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8} "
    "FROM {rows} ORDER BY {order}",
    9,
)
FINISH_REQUEST: Final = BulkStatement(
    "UPDATE requests SET state = {0}, reason = {1}, attempts = {2}, not_before = {3}, "
    "finished_at = {4}, lease_owner = NULL, lease_expires = NULL "
    "FROM {rows} WHERE requests.id = {5}",
    6,
)
UPSERT_ROBOTS: Final = BulkStatement(
    "INSERT OR REPLACE INTO robots (url, host, fetched_at, status, outcome, crawl_delay, body, "
    "error, crawl_id) SELECT {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8} "
    "FROM {rows} ORDER BY {order}",
    9,
)
UPSERT_HOST: Final = BulkStatement(
    "INSERT INTO hosts (host, admitted, fetched, errors, crawl_delay, throttle_delay, "
    "throttle_concurrency, not_before, last_status, updated_at, cookies) "
    "SELECT {0}, 0, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9} FROM {rows} WHERE true "
    "ORDER BY {order} "
    "ON CONFLICT (host) DO UPDATE SET fetched = hosts.fetched + excluded.fetched, "
    "errors = hosts.errors + excluded.errors, crawl_delay = excluded.crawl_delay, "
    "throttle_delay = excluded.throttle_delay, "
    "throttle_concurrency = excluded.throttle_concurrency, "
    # the later of the two: another process sharing the file may have seen a cool-down
    "not_before = CASE WHEN hosts.not_before IS NULL OR excluded.not_before > hosts.not_before "
    "THEN excluded.not_before ELSE hosts.not_before END, "
    "last_status = coalesce(excluded.last_status, hosts.last_status), "
    "updated_at = excluded.updated_at, cookies = coalesce(excluded.cookies, hosts.cookies)",
    10,
)
"""One row per host of a batch (crawler.store.rows): pages fetched and errors are added to
the stored counts, the throttle's state replaces the stored one, and so do the cookies when
they changed (crawler.fetch.cookies)."""
