"""The number of pending requests on PostgreSQL, which a run starts from (its progress line
and summary), kept by triggers instead of counted: at a million pending rows, a count read
them all each time a worker started.

Statement-level triggers with transition tables (one update per statement, not per row)
add each INSERT, UPDATE or DELETE's change of pending rows to `frontier_pending`, in the
row of the server process that ran it (`pg_backend_pid()`), so that workers committing at
the same time never wait for each other's row. A run that starts folds the rows of the
processes that are gone into row 0 (`fold_pending`). The sum of the rows is the count.
"""

from __future__ import annotations

from typing import Final

import asyncpg

__all__ = ["PENDING_COUNTS", "fold_pending", "pending_count"]

PENDING_COUNTS: Final = """
    CREATE TABLE frontier_pending (
        backend       bigint PRIMARY KEY,     -- pg_backend_pid() of the writer; 0: folded
        pending       bigint NOT NULL
    );
    INSERT INTO frontier_pending (backend, pending)
        SELECT 0, count(*) FROM requests WHERE state = 'pending';
    CREATE FUNCTION crawler_count_pending() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        delta bigint := 0;
    BEGIN
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            delta := delta + (SELECT count(*) FROM new_rows WHERE state = 'pending');
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            delta := delta - (SELECT count(*) FROM old_rows WHERE state = 'pending');
        END IF;
        IF delta != 0 THEN
            INSERT INTO frontier_pending AS f (backend, pending)
                VALUES (pg_backend_pid(), delta)
                ON CONFLICT (backend) DO UPDATE SET pending = f.pending + excluded.pending;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER requests_pending_insert AFTER INSERT ON requests
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION crawler_count_pending();
    CREATE TRIGGER requests_pending_update AFTER UPDATE ON requests
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION crawler_count_pending();
    CREATE TRIGGER requests_pending_delete AFTER DELETE ON requests
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION crawler_count_pending();
    """
"""The table and its triggers (PG migration 6), counting the pending rows there are."""


async def fold_pending(conn: asyncpg.Connection) -> None:
    """Add the `frontier_pending` rows of server processes that are gone to row 0 (one
    run starts at a time: crawler.store.pg_runs). A row of a process still connected is
    kept: it may be locked by a batch in progress."""
    await conn.execute(
        "WITH gone AS (DELETE FROM frontier_pending WHERE backend != 0 "
        "AND backend NOT IN (SELECT pid FROM pg_stat_activity) RETURNING pending) "
        "UPDATE frontier_pending SET pending = pending + (SELECT coalesce(sum(pending), 0) "
        "FROM gone) WHERE backend = 0"
    )


async def pending_count(conn: asyncpg.Connection) -> int:
    """The number of pending requests: the sum of the rows."""
    return int(await conn.fetchval("SELECT coalesce(sum(pending), 0) FROM frontier_pending"))
