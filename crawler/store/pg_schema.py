"""The crawl database on PostgreSQL: the same tables, columns and meanings as the SQLite file
(crawler.store.schema describes them), in PostgreSQL's types: JSON columns are `jsonb`,
bodies `bytea`, integers `bigint`, unix times `double precision`; timestamps stay ISO text so
that queries compare them the same way on both.

A crawl database is one PostgreSQL database, named by a URL (`postgresql://user@host:port/db`,
also `postgres://`). `open_pg` connects and creates or upgrades the schema under an advisory
lock, so that many workers starting at once create it once. The schema version is the row of
`crawler_schema`; `PG_MIGRATIONS[n]` brings version n to n + 1, as for SQLite. Three SQL
functions of SQLite that the crawler's reports use are defined too (`julianday(text)`,
`instr(text, text)`, `round(double precision, integer)`), so the same queries run on both.

The counters `frontier_counts` and `hosts.admitted` are kept by statement-level triggers
(one update per statement, not per row), which is what the page budgets read; so is the
number of pending requests (crawler.store.pg_pending). asyncpg's and the network's errors
become ours here too (`pg_error`).
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg

from crawler.errors import StorageError, StorageFailure
from crawler.store.pg_pending import PENDING_COUNTS
from crawler.store.pg_url import redact

__all__ = [
    "PG_MIGRATIONS",
    "PG_SCHEMA_VERSION",
    "is_connection_loss",
    "open_pg",
    "pg_error",
]

_LOCK_KEY: Final = 0x43524C31  # "CRL1", as SQLite's application_id
_CONNECT_TIMEOUT: Final = 10.0

PG_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE FUNCTION julianday(text) RETURNS double precision LANGUAGE sql STABLE
        AS $$ SELECT extract(epoch FROM $1::timestamptz)::double precision / 86400 + 2440587.5 $$;
    CREATE FUNCTION instr(text, text) RETURNS integer LANGUAGE sql IMMUTABLE
        AS $$ SELECT strpos($1, $2) $$;
    CREATE FUNCTION round(double precision, integer) RETURNS double precision
        LANGUAGE sql IMMUTABLE AS $$ SELECT round($1::numeric, $2)::double precision $$;
    CREATE TABLE crawls (
        id            bigserial PRIMARY KEY,
        spider        text NOT NULL,
        started_at    text NOT NULL,
        finished_at   text,
        status        text NOT NULL,
        reason        text,
        settings      jsonb NOT NULL,
        stats         jsonb,
        pid           bigint,
        hostname      text,
        heartbeat_at  double precision
    );
    CREATE TABLE requests (
        id            bigserial PRIMARY KEY,
        url           text NOT NULL,
        fingerprint   bigint NOT NULL UNIQUE,
        host          text NOT NULL,
        method        text NOT NULL DEFAULT 'GET',
        callback      text,
        headers       jsonb,
        meta          jsonb,
        depth         bigint NOT NULL,
        priority      bigint NOT NULL DEFAULT 0,
        state         text NOT NULL,
        reason        text,
        attempts      bigint NOT NULL DEFAULT 0,
        not_before    double precision,
        lease_owner   bigint,
        lease_expires double precision,
        parent_id     bigint,
        crawl_id      bigint NOT NULL,
        discovered_at text NOT NULL,
        finished_at   text,
        lastmod       text
    );
    CREATE INDEX requests_frontier ON requests (host, priority DESC, id)
        WHERE state = 'pending';
    CREATE INDEX requests_leased ON requests (host)
        WHERE state = 'pending' AND lease_owner IS NOT NULL;
    CREATE INDEX requests_budget_skips ON requests (host, id)
        WHERE state = 'skipped' AND reason IN ('max_pages', 'max_pages_per_host');
    CREATE TABLE pages (
        id            bigserial PRIMARY KEY,
        request_id    bigint NOT NULL UNIQUE REFERENCES requests (id),
        crawl_id      bigint NOT NULL,
        url           text NOT NULL,
        final_url     text NOT NULL,
        status        bigint NOT NULL,
        content_type  text NOT NULL,
        encoding      text,
        size_bytes    bigint NOT NULL,
        depth         bigint NOT NULL,
        elapsed_ms    double precision NOT NULL,
        fetched_at    text NOT NULL,
        body          bytea,
        etag          text,
        last_modified text,
        body_hash     bigint
    );
    CREATE TABLE links (
        page_id       bigint NOT NULL REFERENCES pages (id),
        from_url      text NOT NULL,
        to_url        text NOT NULL
    );
    CREATE TABLE items (
        id            bigserial PRIMARY KEY,
        crawl_id      bigint NOT NULL,
        request_id    bigint NOT NULL,
        page_url      text NOT NULL,
        type          text NOT NULL,
        data          jsonb NOT NULL,
        created_at    text NOT NULL
    );
    CREATE INDEX items_type ON items (type);
    CREATE TABLE errors (
        id            bigserial PRIMARY KEY,
        crawl_id      bigint NOT NULL,
        request_id    bigint,
        url           text NOT NULL,
        kind          text NOT NULL,
        message       text NOT NULL,
        attempt       bigint NOT NULL,
        callback      text,
        created_at    text NOT NULL
    );
    CREATE TABLE robots (
        url           text PRIMARY KEY,
        host          text NOT NULL,
        fetched_at    text NOT NULL,
        status        bigint,
        outcome       text NOT NULL,
        crawl_delay   double precision,
        body          text,
        error         text,
        crawl_id      bigint NOT NULL
    );
    CREATE INDEX robots_host ON robots (host);
    CREATE TABLE item_errors (
        id            bigserial PRIMARY KEY,
        crawl_id      bigint NOT NULL,
        request_id    bigint,
        url           text NOT NULL,
        callback      text,
        item_type     text NOT NULL,
        field         text NOT NULL,
        message       text NOT NULL,
        data          jsonb NOT NULL,
        created_at    text NOT NULL
    );
    CREATE TABLE item_keys (
        type          text NOT NULL,
        key_hash      bigint NOT NULL,
        key           jsonb NOT NULL,
        crawl_id      bigint NOT NULL,
        created_at    text NOT NULL,
        request_id    bigint,
        UNIQUE (type, key_hash)
    );
    CREATE INDEX item_keys_request ON item_keys (request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE fetches (
        id            bigserial PRIMARY KEY,
        request_id    bigint NOT NULL,
        crawl_id      bigint NOT NULL,
        url           text NOT NULL,
        status        bigint NOT NULL,
        size_bytes    bigint NOT NULL,
        body_hash     bigint,
        changed       bigint NOT NULL,
        conditional   bigint NOT NULL,
        elapsed_ms    double precision NOT NULL,
        fetched_at    text NOT NULL,
        http_version  text,
        reason        text,
        headers       jsonb,
        request_headers jsonb
    );
    CREATE INDEX fetches_request ON fetches (request_id, id);
    CREATE TABLE item_history (
        id            bigserial PRIMARY KEY,
        item_id       bigint NOT NULL,
        crawl_id      bigint NOT NULL,
        request_id    bigint NOT NULL,
        page_url      text NOT NULL,
        type          text NOT NULL,
        data          jsonb NOT NULL,
        created_at    text NOT NULL,
        replaced_at   text NOT NULL,
        replaced_by   bigint,
        reason        text NOT NULL
    );
    CREATE INDEX item_history_request ON item_history (request_id);
    CREATE INDEX items_request ON items (request_id);
    CREATE INDEX links_page ON links (page_id);
    CREATE TABLE item_tables (
        type          text NOT NULL,
        kind          text NOT NULL,
        name          text NOT NULL UNIQUE,
        columns       json NOT NULL,          -- json, not jsonb: the columns' order counts
        json_columns  json NOT NULL,
        last_item_id  bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (type, kind)
    );
    CREATE TABLE frontier_counts (
        id            bigint PRIMARY KEY CHECK (id = 1),
        admitted      bigint NOT NULL
    );
    INSERT INTO frontier_counts (id, admitted) VALUES (1, 0);
    CREATE TABLE hosts (
        host                 text PRIMARY KEY,
        admitted             bigint NOT NULL DEFAULT 0,
        fetched              bigint NOT NULL DEFAULT 0,
        errors               bigint NOT NULL DEFAULT 0,
        crawl_delay          double precision,
        throttle_delay       double precision,
        throttle_concurrency bigint,
        not_before           double precision,
        last_status          bigint,
        updated_at           text
    );
    CREATE VIEW item_versions AS
        SELECT id AS item_id, crawl_id, request_id, page_url, type, data,
               created_at AS valid_from, NULL::text AS valid_to
        FROM items
        UNION ALL
        SELECT item_id, crawl_id, request_id, page_url, type, data,
               created_at AS valid_from, replaced_at AS valid_to
        FROM item_history;
    CREATE FUNCTION crawler_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        WITH delta AS (
            SELECT host, count(*) AS n FROM new_rows WHERE state != 'skipped' GROUP BY host
        ), total AS (
            UPDATE frontier_counts SET admitted = admitted + (SELECT sum(n) FROM delta)
            WHERE id = 1 AND EXISTS (SELECT 1 FROM delta)
        )
        INSERT INTO hosts AS h (host, admitted) SELECT host, n FROM delta ORDER BY host
            ON CONFLICT (host) DO UPDATE SET admitted = h.admitted + excluded.admitted;
        RETURN NULL;
    END $$;
    CREATE FUNCTION crawler_count_state() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        step bigint := CASE WHEN NEW.state = 'skipped' THEN -1 ELSE 1 END;
    BEGIN
        UPDATE frontier_counts SET admitted = admitted + step WHERE id = 1;
        INSERT INTO hosts AS h (host, admitted) VALUES (NEW.host, step)
            ON CONFLICT (host) DO UPDATE SET admitted = h.admitted + excluded.admitted;
        RETURN NULL;
    END $$;
    CREATE TRIGGER requests_count_insert AFTER INSERT ON requests
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION crawler_count_inserted();
    CREATE TRIGGER requests_count_state AFTER UPDATE OF state ON requests
        FOR EACH ROW WHEN ((OLD.state = 'skipped') != (NEW.state = 'skipped'))
        EXECUTE FUNCTION crawler_count_state();
    """,
    # 2: the time series of a crawl (SQLite's migration 6). Only the SQLite writer samples
    # it so far: on PostgreSQL these tables exist, so that the same queries run, and stay
    # empty.
    """
    CREATE TABLE stats_ts (
        id            bigserial PRIMARY KEY,
        crawl_id      bigint NOT NULL,
        at            text NOT NULL,
        elapsed_s     double precision NOT NULL,
        pages         bigint NOT NULL,
        items         bigint NOT NULL,
        errors        bigint NOT NULL,
        failed        bigint NOT NULL,
        skipped       bigint NOT NULL,
        bytes         bigint NOT NULL,
        in_flight     bigint NOT NULL,
        queued        bigint NOT NULL,
        pages_per_s   double precision NOT NULL,
        items_per_s   double precision NOT NULL,
        errors_per_s  double precision NOT NULL,
        bytes_per_s   double precision NOT NULL,
        errors_by_kind    jsonb NOT NULL,
        skipped_by_reason jsonb NOT NULL,
        statuses      jsonb NOT NULL
    );
    CREATE INDEX stats_ts_run ON stats_ts (crawl_id, id);
    CREATE TABLE host_stats (
        crawl_id      bigint NOT NULL,
        host          text NOT NULL,
        updated_at    text NOT NULL,
        in_flight     bigint NOT NULL,
        delay_s       double precision,
        concurrency   bigint,
        paused_s      double precision NOT NULL,
        pages         bigint NOT NULL,
        errors        bigint NOT NULL,
        failed        bigint NOT NULL,
        throttled     bigint NOT NULL,
        avg_ms        double precision,
        last_status   bigint,
        PRIMARY KEY (crawl_id, host)
    );
    """,
    "ALTER TABLE hosts ADD COLUMN cookies text;",  # each host's cookies (crawler.fetch.cookies)
    "CREATE INDEX requests_due ON requests (not_before) "  # when the next deferred request
    "WHERE state = 'pending' AND not_before IS NOT NULL;",  # is due (crawler.store.pg_claims)
    # whether another run holds a live lease: past this run's own (crawler.store.pg_claims)
    "CREATE INDEX requests_lease_owner ON requests (lease_owner, lease_expires) "
    "WHERE state = 'pending' AND lease_owner IS NOT NULL;",
    PENDING_COUNTS,  # 6: the pending requests, counted by triggers (crawler.store.pg_pending)
)
"""The PostgreSQL schema, one script per version (the first is SQLite's three, at once)."""
PG_SCHEMA_VERSION: Final = len(PG_MIGRATIONS)

_CONNECTION_LOSS: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection left mid-operation by a loss
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def is_connection_loss(exc: BaseException) -> bool:
    """Whether the connection to the server failed (worth reconnecting), not a statement."""
    return isinstance(exc, _CONNECTION_LOSS)


def pg_error(url: str, exc: BaseException, doing: str = "use") -> StorageError:
    """What an error of asyncpg or the network while `doing` something with the database at
    `url` means, as one line: a StorageFailure when the server or the network fails (the
    crawl can go on once it is back), else a StorageError."""
    where = redact(url)
    if is_connection_loss(exc) or isinstance(
        exc, asyncpg.exceptions.InsufficientResourcesError | asyncpg.exceptions.DiskFullError
    ):
        return StorageFailure(f"cannot {doing} {where}: {str(exc) or type(exc).__name__}")
    if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
        return StorageError(f"no such database: {where} ({exc})")
    return StorageError(f"cannot {doing} {where}: {exc}")


async def connect_pg(url: str) -> asyncpg.Connection:
    """One connection to the server at `url` (no schema check)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url,
        timeout=_CONNECT_TIMEOUT,
        statement_cache_size=256,
        server_settings={"application_name": "crawler"},
    )
    return conn


async def open_pg(url: str) -> asyncpg.Connection:
    """Connect to the crawl database at `url`, creating or upgrading its schema.

    Raises:
        StorageFailure: the server cannot be reached.
        StorageError: no such database, refused login, a database of a newer crawler.
    """
    try:
        conn = await connect_pg(url)
    except Exception as exc:
        raise pg_error(url, exc, "open") from None
    try:
        await _migrate(conn, url)
    except BaseException as exc:
        await conn.close(timeout=2)
        if isinstance(exc, asyncpg.PostgresError | OSError):
            raise pg_error(url, exc, "open") from None
        raise
    return conn


async def _migrate(conn: asyncpg.Connection, url: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        exists = await conn.fetchval("SELECT to_regclass('crawler_schema') IS NOT NULL")
        if not exists:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename IN ('crawls', 'requests', 'pages')"
            )
            if others:
                raise StorageError(f"{redact(url)} is not a crawl database")
            await conn.execute("CREATE TABLE crawler_schema (version bigint NOT NULL)")
            await conn.execute("INSERT INTO crawler_schema (version) VALUES (0)")
        version = int(await conn.fetchval("SELECT version FROM crawler_schema"))
        if version > PG_SCHEMA_VERSION:
            raise StorageError(
                f"{redact(url)} has schema version {version}, newer than this crawler's "
                f"{PG_SCHEMA_VERSION}: use a newer crawler"
            )
        for script in PG_MIGRATIONS[version:]:
            await conn.execute(script)
        if version < PG_SCHEMA_VERSION:
            await conn.execute("UPDATE crawler_schema SET version = $1", PG_SCHEMA_VERSION)
