"""One worker's connection to a PostgreSQL crawl database that survives losing it.

Every transaction of a run goes through `PgLink.transaction`: when the server or the network
goes away (a restart, a failover, a cut cable) the link reconnects with exponential backoff
and jitter and runs the transaction again; a deadlock or serialization failure between
workers is retried at once. A commit whose answer was lost is not run twice: the transaction
notes its id first (`txid_current()`), and after reconnecting the link asks the server
whether that id committed (`txid_status`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Final, TypeVar, final

import asyncpg

from crawler.errors import StorageFailure
from crawler.store.pg_schema import connect_pg, is_connection_loss, pg_error
from crawler.store.pg_url import redact

__all__ = ["RECONNECT_SECONDS", "PgLink"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

RECONNECT_SECONDS: Final = 300.0
"""How long a run keeps trying to reach a server that went away before it fails."""
_FIRST_BACKOFF: Final = 0.2
_MAX_BACKOFF: Final = 10.0
_REFUSED_ROWS: Final = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.UntranslatableCharacterError,
    asyncpg.exceptions.CharacterNotInRepertoireError,
)
"""What the server says about a value or a row, not about itself: crawler.store.refusals
finds the row by splitting the batch (it reads these as ValueError)."""
_CONFLICTS: Final = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


@final
class PgLink:
    """The connection of one run (its writer's): reconnects when it is lost."""

    def __init__(self, url: str, conn: asyncpg.Connection | None) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = conn

    async def connection(self) -> asyncpg.Connection:
        """The open connection, reconnecting (with backoff) if it was lost.

        Raises:
            StorageFailure: the server stayed out of reach for `RECONNECT_SECONDS`.
        """
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        deadline = time.monotonic() + RECONNECT_SECONDS
        backoff = _FIRST_BACKOFF
        while True:
            try:
                self._conn = await connect_pg(self.url)
            except Exception as exc:
                if not is_connection_loss(exc) or time.monotonic() > deadline:
                    raise pg_error(self.url, exc, "reconnect to") from None
                logger.warning("%s: %s; reconnecting in %.1fs", redact(self.url), exc, backoff)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(_MAX_BACKOFF, backoff * 2)
            else:
                logger.warning("reconnected to %s", redact(self.url))
                return self._conn

    async def transaction(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work(conn)` in one transaction and commit it, once: again after a lost
        connection (unless the lost commit went through) or a conflict with another worker.

        Raises:
            StorageFailure: the server stayed out of reach.
            StorageError: the server refused the statements.
            ValueError: the server refused a value of a row (see `_REFUSED_ROWS`).
        """
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            conn = await self.connection()
            xid: int | None = None
            outcome: list[T] = []
            try:
                async with conn.transaction():
                    xid = int(await conn.fetchval("SELECT txid_current()"))
                    outcome.append(await work(conn))
                return outcome[0]
            except _CONFLICTS:
                continue
            except _REFUSED_ROWS as exc:
                raise ValueError(f"{type(exc).__name__}: {exc}") from exc  # a row's content
            except Exception as exc:
                if isinstance(exc, asyncpg.PostgresError) and not is_connection_loss(exc):
                    raise pg_error(self.url, exc, "write to") from exc
                if not is_connection_loss(exc):
                    raise
                self._drop()
                if time.monotonic() > deadline:
                    raise pg_error(self.url, exc, "write to") from None
                logger.warning("lost the connection to %s: %s", redact(self.url), exc)
                if xid is not None and outcome and await self._committed(xid):
                    return outcome[0]  # the commit went through; only its answer was lost

    async def _committed(self, xid: int) -> bool:
        conn = await self.connection()
        status = await conn.fetchval("SELECT txid_status($1)", xid)
        return bool(status == "committed")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
        self._conn = None

    async def close(self) -> None:
        """Close the connection (quietly: the run is over either way)."""
        if self._conn is not None:
            with suppress(Exception):
                await self._conn.close(timeout=5)
            self._conn = None

    async def require(self) -> asyncpg.Connection:
        """The connection, as `connection()`, but never waiting to reconnect (at the end
        of a run, when there is no time to wait for the server).

        Raises:
            StorageFailure: the connection is lost.
        """
        if self._conn is None or self._conn.is_closed():
            raise StorageFailure(f"lost the connection to {redact(self.url)}")
        return self._conn
