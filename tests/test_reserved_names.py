"""An item type never gets a table whose name the crawler's own schema uses, or will use:
every name a fresh database holds, and every name the schema's SQL creates (the transient
tables of migrations too), is in `RESERVED_NAMES`. A new table, index or trigger without
its name there fails here."""

from __future__ import annotations

import re
from typing import Final

from crawler.store.backends import open_store
from crawler.store.item_registry import RESERVED_NAMES
from tests.conftest import ROOT
from tests.databases import Target, is_postgres, rows

_CREATED: Final = re.compile(
    r"\b(?:CREATE\s+(?:UNIQUE\s+)?(?:TABLE|VIEW|INDEX|TRIGGER)(?:\s+IF\s+NOT\s+EXISTS)?"
    r"|RENAME\s+TO)\s+\"?(\w+)",
    re.IGNORECASE,
)
"""The name of what a statement creates, or what `ALTER TABLE … RENAME TO` names."""


async def test_every_object_of_a_fresh_database_has_a_reserved_name(database: Target) -> None:
    store = await open_store(str(database) if is_postgres(database) else database)
    await store.close()
    if is_postgres(database):
        # Tables and views: what an item table's CREATE would collide with; the indexes and
        # triggers the crawler names itself are checked in its SQL (below).
        sql = (
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
            "AND c.relkind IN ('r', 'v', 'm', 'p')"
        )
    else:  # one namespace for tables, views, indexes and triggers
        sql = "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    names = {name for (name,) in rows(database, sql)}
    assert len(names) > 10
    assert names - RESERVED_NAMES == set()


def test_every_name_the_schema_sql_creates_is_reserved() -> None:
    created = {
        match.group(1).lower()
        for path in (ROOT / "crawler" / "store").glob("*.py")
        for match in _CREATED.finditer(path.read_text(encoding="utf-8"))
    }
    assert {"requests", "requests_new", "item_versions", "fetches_request"} <= created
    assert created - RESERVED_NAMES == set()


def test_reserved_names_are_lower_case() -> None:
    # The registry compares a candidate's lowered name (SQL names ignore case).
    assert all(name == name.lower() for name in RESERVED_NAMES)
