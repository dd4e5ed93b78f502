"""Admission by the SQLite writer (crawler.store.budgets, crawler.store.writer and the set's
triggers, crawler.store.fingerprints), against a model: for any sequence of write batches
of discovered requests (new ones, known ones, URLs refused for depth found again, repeats
within a batch), under any page budgets, the file ends with each URL in the state the model
gives it, and the writer counts what the model counts.

The model is the rule as the README states it, first come first served: a URL the file holds
stays as it is, but for one refused for depth, which a request found again reopens; a new URL
(or a reopened one) is admitted while `max_pages` and its host's `max_pages_per_host` have
room, and is otherwise stored skipped for the budget. A batch far from every budget takes
the writer's fast path (no lookup before the insert), one near a budget the exact one; both
must give the model's answer."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler import Request
from crawler.errors import SkipReason
from crawler.records import Candidate, PageResult, RequestState, Skipped
from crawler.settings import load_settings
from crawler.stats import Stats
from crawler.store.rows import Seeds
from crawler.store.schema import open_database
from crawler.store.writer import Storage
from tests.databases import assert_intact, rows

HOSTS: Final = 3
PARENTS: Final = 40
"""Pending requests of another host that batches of page results finish, one each."""


def host_of(fingerprint: int) -> str:
    return f"h{fingerprint % HOSTS}.test"


def url_of(fingerprint: int) -> str:
    return f"http://{host_of(fingerprint)}/{fingerprint}"


def candidate(fingerprint: int, depth: int) -> Candidate:
    url = url_of(fingerprint)
    return Candidate(
        url=url,
        fingerprint=fingerprint,
        host=host_of(fingerprint),
        request=Request(url, depth=depth, priority=depth),
        parent_id=None,
        meta_json=None,
        headers_json=None,
    )


def refused_for_depth(fingerprint: int) -> Skipped:
    return Skipped(
        url=url_of(fingerprint),
        fingerprint=fingerprint,
        host=host_of(fingerprint),
        reason=SkipReason.DEPTH,
        depth=9,
        parent_id=None,
    )


@dataclass
class Model:
    """What the file should hold and the writer should count."""

    max_pages: int
    per_host: int
    admitted: int
    """Requests admitted in the file (the parents count too)."""
    state: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    depth: dict[int, int] = field(default_factory=dict)
    by_host: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def refuse_for_depth(self, fingerprints: list[int]) -> None:
        for fp in fingerprints:
            self.skipped[SkipReason.DEPTH.value] += 1
            self.state.setdefault(fp, ("skipped", SkipReason.DEPTH.value))

    def admit(self, found: list[tuple[int, int]]) -> None:
        seen: set[int] = set()
        for fp, depth in found:
            if fp in seen:
                self.skipped[SkipReason.DUPLICATE.value] += 1
                continue
            seen.add(fp)
            held = self.state.get(fp)
            if held is not None and held != ("skipped", SkipReason.DEPTH.value):
                self.skipped[SkipReason.DUPLICATE.value] += 1
                continue
            host = host_of(fp)
            reason = None
            if self.max_pages and self.admitted >= self.max_pages:
                reason = SkipReason.MAX_PAGES.value
            elif self.per_host and self.by_host[host] >= self.per_host:
                reason = SkipReason.MAX_PAGES_PER_HOST.value
            if reason is not None:
                self.skipped[reason] += 1
                self.state.setdefault(fp, ("skipped", reason))
                continue
            self.admitted += 1
            self.by_host[host] += 1
            self.state[fp] = ("pending", None)
            self.depth[fp] = depth


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """A crawl database with a run and `PARENTS` pending requests of `parent.test`."""

    async def make(db: Path) -> None:
        conn = await open_database(db)
        try:
            await conn.execute(
                "INSERT INTO crawls (id, spider, started_at, status, settings) "
                "VALUES (1, 'model', '2026-01-01', 'running', '{}')"
            )
            await conn.executemany(
                "INSERT INTO requests (url, fingerprint, host, callback, depth, state, "
                "crawl_id, discovered_at) VALUES (?, ?, 'parent.test', 'parse', 0, 'pending', "
                "1, '2026-01-01')",
                [(f"http://parent.test/{n}", 10**12 + n) for n in range(PARENTS)],
            )
            await conn.commit()
        finally:
            await conn.close()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "template.db"
        asyncio.run(make(db))
        yield db


fingerprints = st.integers(0, 24)
Batch = tuple[str, list[tuple[int, int]]]
"""A kind of write batch ("depth": URLs refused for depth; "seeds" or "result": requests
found, by start requests or by a page's result) and its (fingerprint, depth) pairs."""
batches = st.lists(
    st.tuples(
        st.sampled_from(["depth", "seeds", "result"]),
        st.lists(st.tuples(fingerprints, st.integers(0, 3)), max_size=14),
    ),
    max_size=10,
)


@settings(max_examples=60, deadline=None)
@given(
    batches=batches,
    max_pages=st.sampled_from([0, PARENTS + 1, PARENTS + 5, PARENTS + 12, 10_000]),
    per_host=st.sampled_from([0, 1, 3, 10_000]),
)
def test_admission_matches_the_model_under_any_budgets(
    template: Path, batches: list[Batch], max_pages: int, per_host: int
) -> None:
    model = Model(max_pages=max_pages, per_host=per_host, admitted=PARENTS)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "crawl.db"
        shutil.copy(template, db)
        stats = asyncio.run(write(db, batches, model))
        held = {
            int(fp): (str(state), reason)
            for fp, state, reason in rows(
                db, "SELECT fingerprint, state, reason FROM requests WHERE host != 'parent.test'"
            )
        }
        assert held == model.state
        depths = rows(
            db,
            "SELECT fingerprint, depth FROM requests WHERE state = 'pending' "
            "AND host != 'parent.test'",
        )
        assert dict(depths) == model.depth  # a reopened URL is stored as found again
        assert stats.admitted == model.admitted - PARENTS
        assert +stats.skipped == +model.skipped
        assert_intact(db)


async def write(db: Path, batches: list[Batch], model: Model) -> Stats:
    """Commit `batches` through the real writer's transaction; follow each in `model`."""
    budgets = {"max_pages": model.max_pages, "max_pages_per_host": model.per_host}
    settings = load_settings(overrides=budgets).settings
    stats = Stats()
    conn = await open_database(db)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(conn.close)
        storage = Storage(conn, run_id=1, settings=settings, stats=stats, on_committed=print)
        await storage.load_counts()
        parents = iter(range(1, PARENTS + 1))
        for kind, found in batches:
            if kind == "depth":
                refused = [fp for fp, _ in found]
                await storage._commit([Seeds(skipped=[refused_for_depth(fp) for fp in refused])])
                model.refuse_for_depth(refused)
                continue
            candidates = [candidate(fp, depth) for fp, depth in found]
            if kind == "seeds":
                await storage._commit([Seeds(candidates=candidates)])
            else:
                parent = next(parents)
                result = PageResult(
                    request_id=parent,
                    url=f"http://parent.test/{parent - 1}",
                    state=RequestState.FAILED,
                    reason="http_status: 500",
                    attempts=1,
                    candidates=candidates,
                )
                await storage._commit([result])
            model.admit(found)
    return stats
