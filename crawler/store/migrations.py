"""The SQL that creates and upgrades the crawl database, one script per schema version:
`MIGRATIONS[n]` brings a file at version n to version n + 1 (crawler.store.schema runs them
and describes the tables).

A script's statements run one by one inside the caller's transaction, so that a migration is
applied whole or not at all; add a script rather than change one that has shipped.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS"]

_COUNT_TRIGGERS: Final = """
    CREATE TRIGGER requests_count_insert AFTER INSERT ON requests
        WHEN NEW.state != 'skipped'
    BEGIN
        UPDATE frontier_counts SET admitted = admitted + 1;
        INSERT INTO hosts (host, admitted) VALUES (NEW.host, 1)
            ON CONFLICT (host) DO UPDATE SET admitted = admitted + 1;
    END;
    CREATE TRIGGER requests_count_skip AFTER UPDATE OF state ON requests
        WHEN OLD.state != 'skipped' AND NEW.state = 'skipped'
    BEGIN
        UPDATE frontier_counts SET admitted = admitted - 1;
        UPDATE hosts SET admitted = admitted - 1 WHERE host = OLD.host;
    END;
    CREATE TRIGGER requests_count_reopen AFTER UPDATE OF state ON requests
        WHEN OLD.state = 'skipped' AND NEW.state != 'skipped'
    BEGIN
        UPDATE frontier_counts SET admitted = admitted + 1;
        INSERT INTO hosts (host, admitted) VALUES (NEW.host, 1)
            ON CONFLICT (host) DO UPDATE SET admitted = admitted + 1;
    END;
"""
"""The triggers that keep `frontier_counts` and `hosts.admitted` (script 2; script 8
makes them again on the rebuilt `requests`)."""

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE crawls (
        id            INTEGER PRIMARY KEY,
        spider        TEXT NOT NULL,
        started_at    TEXT NOT NULL,
        finished_at   TEXT,
        status        TEXT NOT NULL,  -- running|finished|interrupted|stopped|crashed|failed
        reason        TEXT,
        settings      TEXT NOT NULL,          -- JSON: the effective settings
        stats         TEXT,                   -- JSON: the final summary of this run
        pid           INTEGER,
        hostname      TEXT,
        heartbeat_at  REAL                    -- unix time, refreshed while the run is alive
    );
    CREATE TABLE requests (
        id            INTEGER PRIMARY KEY,
        url           TEXT NOT NULL,
        fingerprint   INTEGER NOT NULL UNIQUE,  -- 64-bit hash of the canonical request
        host          TEXT NOT NULL,
        method        TEXT NOT NULL DEFAULT 'GET',
        callback      TEXT,
        headers       TEXT,                   -- JSON or NULL
        meta          TEXT,                   -- JSON or NULL
        depth         INTEGER NOT NULL,
        priority      INTEGER NOT NULL DEFAULT 0,
        state         TEXT NOT NULL,          -- pending | done | failed | skipped
        reason        TEXT,                   -- why failed or skipped
        attempts      INTEGER NOT NULL DEFAULT 0,
        not_before    REAL,                   -- unix time before which it is not fetched
        lease_owner   INTEGER,                -- crawls.id of the run that claimed it
        lease_expires REAL,
        parent_id     INTEGER,                -- requests.id of the page that linked here
        crawl_id      INTEGER NOT NULL,       -- run that discovered it
        discovered_at TEXT NOT NULL,
        finished_at   TEXT
    );
    CREATE INDEX requests_frontier ON requests (host, priority DESC, id)
        WHERE state = 'pending';              -- claims: hosts take turns (crawler.store.writer)
    CREATE TABLE pages (
        id            INTEGER PRIMARY KEY,
        request_id    INTEGER NOT NULL UNIQUE REFERENCES requests (id),
        crawl_id      INTEGER NOT NULL,
        url           TEXT NOT NULL,
        final_url     TEXT NOT NULL,
        status        INTEGER NOT NULL,
        content_type  TEXT NOT NULL,
        encoding      TEXT,
        size_bytes    INTEGER NOT NULL,
        depth         INTEGER NOT NULL,
        elapsed_ms    REAL NOT NULL,
        fetched_at    TEXT NOT NULL,
        body          BLOB                    -- gzip-compressed, when store_body is on
    );
    CREATE TABLE links (
        page_id       INTEGER NOT NULL REFERENCES pages (id),
        from_url      TEXT NOT NULL,
        to_url        TEXT NOT NULL
    );
    CREATE TABLE items (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        request_id    INTEGER NOT NULL,
        page_url      TEXT NOT NULL,
        type          TEXT NOT NULL,
        data          TEXT NOT NULL,          -- JSON object
        created_at    TEXT NOT NULL
    );
    CREATE INDEX items_type ON items (type);
    CREATE TABLE errors (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        request_id    INTEGER,
        url           TEXT NOT NULL,
        kind          TEXT NOT NULL,          -- timeout | connection | protocol | http_status |
                                              -- too_large | redirect | spider | item | blocking
        message       TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        callback      TEXT,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE robots (
        url           TEXT PRIMARY KEY,       -- the robots.txt URL: scheme://host[:port]/robots.txt
        host          TEXT NOT NULL,
        fetched_at    TEXT NOT NULL,
        status        INTEGER,                -- HTTP status; NULL when no response arrived
        outcome       TEXT NOT NULL,          -- rules | allow_all | disallow_all
        crawl_delay   REAL,                   -- Crawl-delay of user_agent's group, seconds
        body          TEXT,                   -- the robots.txt (first 500 KiB), for rules
        error         TEXT,                   -- why allow_all or disallow_all
        crawl_id      INTEGER NOT NULL
    );
    CREATE TABLE item_errors (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        request_id    INTEGER,
        url           TEXT NOT NULL,
        callback      TEXT,
        item_type     TEXT NOT NULL,
        field         TEXT NOT NULL,          -- the first bad field: price, tags[2]
        message       TEXT NOT NULL,          -- every problem found in the item
        data          TEXT NOT NULL,          -- JSON: the item as yielded
        created_at    TEXT NOT NULL
    );
    CREATE TABLE item_keys (
        type          TEXT NOT NULL,
        key_hash      INTEGER NOT NULL,       -- 64-bit hash of key
        key           TEXT NOT NULL,          -- JSON array of the key fields' values
        crawl_id      INTEGER NOT NULL,
        created_at    TEXT NOT NULL,
        UNIQUE (type, key_hash)
    );
    CREATE TABLE item_tables (
        type          TEXT NOT NULL,          -- item type name, as in items.type
        kind          TEXT NOT NULL,          -- table (dataclass items) | view (dict items)
        name          TEXT NOT NULL UNIQUE,   -- the table or view: book, quote_view
        columns       TEXT NOT NULL,          -- JSON object: field or key -> column
        json_columns  TEXT NOT NULL,          -- JSON array: columns holding JSON text
        last_item_id  INTEGER NOT NULL DEFAULT 0,  -- views: items.id scanned for new keys
        PRIMARY KEY (type, kind)
    );
    """,
    # 2: URLs refused only for a run's page budget, which a resume reopens; without this
    # index, finding them scanned every request at the start of every run.
    """
    CREATE INDEX requests_budget_skips ON requests (host, id)
        WHERE state = 'skipped' AND reason IN ('max_pages', 'max_pages_per_host');
    """,
    # 3: what the page budgets count, kept by triggers in every write of every process on
    # the file, so that a batch reads two counters instead of counting `requests`.
    """
    CREATE TABLE frontier_counts (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        admitted      INTEGER NOT NULL        -- requests not skipped: what max_pages counts
    );
    INSERT INTO frontier_counts (id, admitted)
        SELECT 1, count(*) FROM requests WHERE state != 'skipped';
    CREATE TABLE hosts (
        host          TEXT PRIMARY KEY,
        admitted      INTEGER NOT NULL        -- the same per host: max_pages_per_host
    ) WITHOUT ROWID;
    INSERT INTO hosts (host, admitted)
        SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host;
    """
    + _COUNT_TRIGGERS,
    # 4: what each host has learned, so that a host can leave memory and come back (a
    # broad crawl keeps only the hosts with work in memory) and a resume continues from it;
    # written by the writer with each batch, read back when a claim brings a host work.
    """
    ALTER TABLE hosts ADD COLUMN fetched INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hosts ADD COLUMN errors INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hosts ADD COLUMN crawl_delay REAL;
    ALTER TABLE hosts ADD COLUMN throttle_delay REAL;
    ALTER TABLE hosts ADD COLUMN throttle_concurrency INTEGER;
    ALTER TABLE hosts ADD COLUMN not_before REAL;
    ALTER TABLE hosts ADD COLUMN last_status INTEGER;
    ALTER TABLE hosts ADD COLUMN updated_at TEXT;
    UPDATE hosts SET fetched = counted.n FROM (
        SELECT requests.host AS host, count(*) AS n
        FROM pages JOIN requests ON requests.id = pages.request_id GROUP BY requests.host
    ) AS counted WHERE counted.host = hosts.host;
    UPDATE hosts SET errors = counted.n FROM (
        SELECT requests.host AS host, count(*) AS n
        FROM errors JOIN requests ON requests.id = errors.request_id
        WHERE errors.kind IN ('timeout', 'connection', 'protocol', 'http_status')
        GROUP BY requests.host
    ) AS counted WHERE counted.host = hosts.host;
    CREATE INDEX robots_host ON robots (host);
    """,
    # 5: re-crawls (crawler.engine.recrawl). `pages` holds each request's current page, with
    # the validators a re-fetch sends and the hash that tells an unchanged body; `fetches`
    # keeps every response received; `item_history` the items a re-parsed page replaced.
    """
    ALTER TABLE pages ADD COLUMN etag TEXT;
    ALTER TABLE pages ADD COLUMN last_modified TEXT;
    ALTER TABLE pages ADD COLUMN body_hash INTEGER;   -- CRC-32 and length of the decoded body
    ALTER TABLE requests ADD COLUMN lastmod TEXT;     -- the sitemap's <lastmod>, UTC text
    ALTER TABLE item_keys ADD COLUMN request_id INTEGER;
    CREATE INDEX item_keys_request ON item_keys (request_id) WHERE request_id IS NOT NULL;
    CREATE TABLE fetches (
        id            INTEGER PRIMARY KEY,
        request_id    INTEGER NOT NULL,
        crawl_id      INTEGER NOT NULL,
        url           TEXT NOT NULL,          -- the final URL, after redirects
        status        INTEGER NOT NULL,
        size_bytes    INTEGER NOT NULL,
        body_hash     INTEGER,                -- of the content: a 304 repeats the stored one
        changed       INTEGER NOT NULL,       -- 1: new or changed content, 0: unchanged
        conditional   INTEGER NOT NULL,       -- 1: sent If-None-Match / If-Modified-Since
        elapsed_ms    REAL NOT NULL,
        fetched_at    TEXT NOT NULL,
        http_version  TEXT,                   -- with store_body: the status line,
        reason        TEXT,
        headers       TEXT,                   -- JSON [[name, value], ...] as received
        request_headers TEXT                  -- JSON [[name, value], ...] as sent
    );
    CREATE INDEX fetches_request ON fetches (request_id, id);
    INSERT INTO fetches (request_id, crawl_id, url, status, size_bytes, changed, conditional,
                         elapsed_ms, fetched_at)
        SELECT request_id, crawl_id, final_url, status, size_bytes, 1, 0, elapsed_ms, fetched_at
        FROM pages ORDER BY id;
    CREATE TABLE item_history (
        id            INTEGER PRIMARY KEY,
        item_id       INTEGER NOT NULL,       -- its items.id while it was current
        crawl_id      INTEGER NOT NULL,       -- the run that stored it
        request_id    INTEGER NOT NULL,
        page_url      TEXT NOT NULL,
        type          TEXT NOT NULL,
        data          TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        replaced_at   TEXT NOT NULL,
        replaced_by   INTEGER,                -- crawls.id of the run that replaced it
        reason        TEXT NOT NULL           -- changed | gone | reparse
    );
    CREATE INDEX item_history_request ON item_history (request_id);
    CREATE VIEW item_versions AS
        SELECT id AS item_id, crawl_id, request_id, page_url, type, data,
               created_at AS valid_from, NULL AS valid_to
        FROM items
        UNION ALL
        SELECT item_id, crawl_id, request_id, page_url, type, data,
               created_at AS valid_from, replaced_at AS valid_to
        FROM item_history;
    """,
    # 6: the time series a crawl writes while it runs (crawler.store.samples), read by
    # `crawler dashboard`; its columns are described in crawler.store.schema. (No comments in
    # the SQL: SQLite keeps the text of each CREATE in the file.)
    """
    CREATE TABLE stats_ts (
        id            INTEGER PRIMARY KEY,
        crawl_id      INTEGER NOT NULL,
        at            TEXT NOT NULL,
        elapsed_s     REAL NOT NULL,
        pages         INTEGER NOT NULL,
        items         INTEGER NOT NULL,
        errors        INTEGER NOT NULL,
        failed        INTEGER NOT NULL,
        skipped       INTEGER NOT NULL,
        bytes         INTEGER NOT NULL,
        in_flight     INTEGER NOT NULL,
        queued        INTEGER NOT NULL,
        pages_per_s   REAL NOT NULL,
        items_per_s   REAL NOT NULL,
        errors_per_s  REAL NOT NULL,
        bytes_per_s   REAL NOT NULL,
        errors_by_kind    TEXT NOT NULL,
        skipped_by_reason TEXT NOT NULL,
        statuses      TEXT NOT NULL
    );
    CREATE INDEX stats_ts_run ON stats_ts (crawl_id, id);
    CREATE TABLE host_stats (
        crawl_id      INTEGER NOT NULL,
        host          TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        in_flight     INTEGER NOT NULL,
        delay_s       REAL,
        concurrency   INTEGER,
        paused_s      REAL NOT NULL,
        pages         INTEGER NOT NULL,
        errors        INTEGER NOT NULL,
        failed        INTEGER NOT NULL,
        throttled     INTEGER NOT NULL,
        avg_ms        REAL,
        last_status   INTEGER,
        PRIMARY KEY (crawl_id, host)
    );
    """,
    # 7: the cookies each host is sent, JSON (crawler.fetch.cookies); NULL: none yet.
    "ALTER TABLE hosts ADD COLUMN cookies TEXT;",
    # 8: the fingerprints leave the unique index of `requests` for a set in two levels,
    # kept by triggers (crawler.store.fingerprints): new ones go to a small table, merged
    # into the large one in order, so that a batch costs the same at any size of the file.
    # The index is part of the table's definition, so the table is copied without it (the
    # drop takes its indexes and triggers along: they are made again as they were).
    """
    CREATE TABLE requests_new (
        id            INTEGER PRIMARY KEY,
        url           TEXT NOT NULL,
        fingerprint   INTEGER NOT NULL,
        host          TEXT NOT NULL,
        method        TEXT NOT NULL DEFAULT 'GET',
        callback      TEXT,
        headers       TEXT,
        meta          TEXT,
        depth         INTEGER NOT NULL,
        priority      INTEGER NOT NULL DEFAULT 0,
        state         TEXT NOT NULL,
        reason        TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        not_before    REAL,
        lease_owner   INTEGER,
        lease_expires REAL,
        parent_id     INTEGER,
        crawl_id      INTEGER NOT NULL,
        discovered_at TEXT NOT NULL,
        finished_at   TEXT,
        lastmod       TEXT
    );
    INSERT INTO requests_new SELECT id, url, fingerprint, host, method, callback, headers, meta,
        depth, priority, state, reason, attempts, not_before, lease_owner, lease_expires,
        parent_id, crawl_id, discovered_at, finished_at, lastmod FROM requests ORDER BY id;
    DROP TABLE requests;
    ALTER TABLE requests_new RENAME TO requests;
    CREATE INDEX requests_frontier ON requests (host, priority DESC, id)
        WHERE state = 'pending';
    CREATE INDEX requests_budget_skips ON requests (host, id)
        WHERE state = 'skipped' AND reason IN ('max_pages', 'max_pages_per_host');
    """
    + _COUNT_TRIGGERS
    + """
    CREATE TABLE fingerprints (
        fingerprint   INTEGER PRIMARY KEY,
        request_id    INTEGER NOT NULL
    );
    CREATE TABLE fingerprints_recent (
        fingerprint   INTEGER PRIMARY KEY,
        request_id    INTEGER NOT NULL
    );
    CREATE TABLE fingerprint_levels (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        merged        INTEGER NOT NULL
    );
    INSERT INTO fingerprints (fingerprint, request_id)
        SELECT fingerprint, id FROM requests ORDER BY fingerprint;
    INSERT INTO fingerprint_levels (id, merged) SELECT 1, count(*) FROM fingerprints;
    CREATE TRIGGER requests_fingerprint_known BEFORE INSERT ON requests
        WHEN EXISTS (SELECT 1 FROM fingerprints_recent WHERE fingerprint = NEW.fingerprint)
            OR EXISTS (SELECT 1 FROM fingerprints WHERE fingerprint = NEW.fingerprint)
    BEGIN
        SELECT RAISE(IGNORE);
    END;
    CREATE TRIGGER requests_fingerprint_add AFTER INSERT ON requests
    BEGIN
        INSERT INTO fingerprints_recent (fingerprint, request_id)
            VALUES (NEW.fingerprint, NEW.id);
    END;
    """,
    # 9: a third, smallest level of the set (`fingerprints_new`), moved into the recent one
    # every few batches, whose size `fingerprint_levels` now keeps; the insert's trigger
    # reopens a URL refused for depth itself (crawler.store.fingerprints).
    """
    CREATE TABLE fingerprints_new (
        fingerprint   INTEGER PRIMARY KEY,
        request_id    INTEGER NOT NULL
    );
    ALTER TABLE fingerprint_levels ADD COLUMN recent INTEGER NOT NULL DEFAULT 0;
    UPDATE fingerprint_levels SET recent = (SELECT count(*) FROM fingerprints_recent);
    DROP TRIGGER requests_fingerprint_known;
    DROP TRIGGER requests_fingerprint_add;
    CREATE TRIGGER requests_fingerprint_known BEFORE INSERT ON requests
        WHEN EXISTS (SELECT 1 FROM fingerprints_new WHERE fingerprint = NEW.fingerprint)
            OR EXISTS (SELECT 1 FROM fingerprints_recent WHERE fingerprint = NEW.fingerprint)
            OR EXISTS (SELECT 1 FROM fingerprints WHERE fingerprint = NEW.fingerprint)
    BEGIN
        UPDATE requests SET state = 'pending', reason = NULL, finished_at = NULL,
            method = NEW.method, callback = NEW.callback, headers = NEW.headers,
            meta = NEW.meta, depth = NEW.depth, priority = NEW.priority,
            parent_id = NEW.parent_id
        WHERE NEW.state = 'pending' AND state = 'skipped' AND reason = 'depth'
            AND id = coalesce(
                (SELECT request_id FROM fingerprints_new WHERE fingerprint = NEW.fingerprint),
                (SELECT request_id FROM fingerprints_recent WHERE fingerprint = NEW.fingerprint),
                (SELECT request_id FROM fingerprints WHERE fingerprint = NEW.fingerprint));
        SELECT RAISE(IGNORE);
    END;
    CREATE TRIGGER requests_fingerprint_add AFTER INSERT ON requests
    BEGIN
        INSERT INTO fingerprints_new (fingerprint, request_id) VALUES (NEW.fingerprint, NEW.id);
    END;
    """,
    # 10: idle claims and leases read the rows concerned, not the frontier (crawler.store.claims)
    """
    CREATE INDEX requests_leased ON requests (lease_owner, lease_expires)
        WHERE lease_owner IS NOT NULL;
    CREATE INDEX requests_due ON requests (not_before)
        WHERE state = 'pending' AND not_before IS NOT NULL;
    """,
    # 11: a claim counts a host's leased rows, by any run (crawler.store.claims)
    "CREATE INDEX requests_host_leases ON requests (host, lease_owner, lease_expires) "
    "WHERE lease_owner IS NOT NULL;",
)
