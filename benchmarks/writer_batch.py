"""The writer's per-batch time with page budgets on, in a file already holding 1,000,000
requests against an empty one: `max_pages` and `max_pages_per_host` read counters kept by
triggers (`frontier_counts`, `hosts`), and new fingerprints go to the small level of the
fingerprint set (crawler.store.fingerprints), so a batch should cost the same at any size.

    python -m benchmarks.writer_batch [--rows 1000000] [--batches 40] [--batch 250] [--rounds 3]

The full file is filled once (one `INSERT … SELECT` from a recursive CTE, in one transaction,
through the real schema and its triggers, then its fingerprint set merged once): `--hosts`
hosts, mostly `done`, some `failed` and `skipped`, the last rows `pending` (the frontier of a
breadth-first crawl is its newest rows). Each round then commits `--batches` batches of
`--batch` results through the real writer's transaction (`crawler.store.writer.Storage`) on
a new empty file and on the full file, the two taking turns batch by batch, so that both
meet the same load of a shared machine. A result is a fetched page of a pending request, 3
dataclass items, 26 links and 10 discovered requests: 8 new (7 on the page's host, 1 on
another) and 2 that an earlier batch admitted. Budgets are on (`max_pages`,
`max_pages_per_host`, neither reached), so every batch looks up which candidates exist
and reads both counters inside its transaction. Only `Storage._commit` (one transaction,
with the set's merge when one is due: the full file keeps its set from round to round, so
merges come at their own pace) is timed; the first batch of each run (it creates the item
table) is left out. The figures pool every timed
batch of a file over all rounds: mean, median and 90th percentile.

Before each round, untimed, the full file's pending requests are exactly the round's own
(10,000 by default), as in the empty file: what the rounds added, and the fill's pending
rows reserved for later rounds, are marked done until their round. So both files start
every round with the same frontier, and differ only in the rows they hold. The per-host
index of pending requests costs a batch more the more requests are pending, whatever the
file's size; `--keep-pending` lets the full file's frontier grow instead (the fill's 51,000
pending rows by default, plus 80,000 a round). For comparison, the
count the budgets ran before the counters (`SELECT count(*) FROM requests WHERE state !=
'skipped'`, once per batch) is timed on both files. `--markdown FILE` writes the table
for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiosqlite

from crawler import Request, Response, Spider
from crawler.frontier.gate import Frontier
from crawler.records import Candidate, PageRecord, PageResult, RequestState, utc_now
from crawler.settings import load_settings
from crawler.stats import Stats
from crawler.store.fingerprints import FLUSH, MERGE
from crawler.store.schema import open_database
from crawler.store.writer import Storage

NEW_PER_PAGE: Final = 8
KNOWN_PER_PAGE: Final = 2
ITEMS_PER_PAGE: Final = 3
LINKS_PER_PAGE: Final = 26
MAX_PAGES: Final = 100_000_000
MAX_PAGES_PER_HOST: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Product:
    """The item each page yields (as the crawl benchmark's spider does)."""

    title: str
    price: float
    sku: str
    rating: int


class WriterBatchSpider(Spider):
    """Only there for the frontier's callback check."""

    name = "writer-batch"

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        """Follow nothing: the writer is what is measured."""
        for _ in ():
            yield Request(response.url)


def host(index: int) -> str:
    return f"host{index}.example"


_FILL: Final = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :rows - 1)
INSERT INTO requests (url, fingerprint, host, callback, depth, state, reason, attempts,
                      parent_id, crawl_id, discovered_at, finished_at)
SELECT 'http://host' || (i % :hosts) || '.example/catalogue/item-' || i || '.html?ref=fill',
       random(), 'host' || (i % :hosts) || '.example', 'parse', 1 + i % 7, state,
       CASE state WHEN 'failed' THEN 'http_status: 404'
                  WHEN 'skipped' THEN CASE WHEN i % 3 THEN 'offsite' ELSE 'robots' END END,
       CASE state WHEN 'pending' THEN 0 ELSE 1 END,
       CASE WHEN i >= :hosts THEN i - :hosts + 1 END, 1,
       '2026-01-01T00:00:00.000+00:00',
       CASE state WHEN 'pending' THEN NULL ELSE '2026-01-01T00:00:01.000+00:00' END
FROM (SELECT i, CASE WHEN i >= :rows - :pending THEN 'pending'
                     WHEN i % 20 = 7 THEN 'skipped'
                     WHEN i % 50 = 3 THEN 'failed'
                     ELSE 'done' END AS state FROM n)
"""
"""`rows` requests on `hosts` hosts: ~5% skipped (offsite, robots), 2% failed, the last
`pending` rows pending, the rest done. INSERT OR nothing: fingerprints are random 64-bit."""


async def create(db: Path, *, rows: int, hosts: int, pending: int) -> list[int]:
    """Create a crawl database with `rows` requests (see `_FILL`); return the ids of its
    pending requests."""
    conn = await open_database(db)
    try:
        await conn.execute(
            "INSERT INTO crawls (spider, started_at, status, settings) "
            "VALUES ('writer-batch', '2026-01-01T00:00:00.000+00:00', 'running', '{}')"
        )
        if rows:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(_FILL, {"rows": rows, "hosts": hosts, "pending": pending})
            for sql in FLUSH + MERGE:  # as the writer's merges would have left it, at some point
                await conn.execute(sql)
            await conn.execute("COMMIT")
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        async with conn.execute(
            "SELECT id FROM requests INDEXED BY requests_frontier "
            "WHERE state = 'pending' ORDER BY id"
        ) as cursor:
            return [int(row[0]) for row in await cursor.fetchall()]
    finally:
        await conn.close()


def make_results(
    ids: Sequence[int], *, hosts: int, batch: int, round_number: int, frontier: Frontier
) -> list[PageResult]:
    """One `PageResult` per pending request of `ids`, the same for both files; the new
    candidates come from the real admission gate."""
    results: list[PageResult] = []
    admitted: list[list[Candidate]] = []
    now = utc_now()
    for k, request_id in enumerate(ids):
        page_host = host((request_id - 1) % hosts)  # as _FILL spreads row ids over hosts
        url = f"http://{page_host}/catalogue/page-{request_id}.html"
        result = PageResult(request_id=request_id, url=url, state=RequestState.DONE, attempts=1)
        result.page = PageRecord(
            url=url,
            final_url=url,
            status=200,
            content_type="text/html",
            encoding="utf-8",
            size_bytes=20_000,
            depth=2,
            elapsed_ms=12.5,
            fetched_at=now,
            body=None,
        )
        for n in range(ITEMS_PER_PAGE):
            product = Product(f"Product {request_id}-{n}", 10.0 + n, f"SKU-{request_id}-{n}", n)
            result.items.append(("Product", json.dumps(dataclasses.asdict(product))))
        result.item_classes[Product] = "Product"
        for n in range(NEW_PER_PAGE):
            target = page_host if n < NEW_PER_PAGE - 1 else host((request_id + 7 * k) % hosts)
            found = Request(
                f"http://{target}/catalogue/r{round_number}/from-{request_id}/link-{n}.html",
                depth=3,
            )
            frontier.admit(
                found, parent_id=request_id, candidates=result.candidates, skipped=result.skipped
            )
        admitted.append(list(result.candidates))
        # Links the previous batch admitted: the frontier's recent set would refuse them, but
        # a real crawl's writer still gets some (other processes, entries the set dropped);
        # they are looked up in the table and counted as duplicates.
        if k >= batch:
            result.candidates.extend(admitted[k - batch][:KNOWN_PER_PAGE])
        result.links = [c.url for c in result.candidates]
        result.links += [url] * (LINKS_PER_PAGE - len(result.links))
        results.append(result)
    return results


@dataclass
class Timings:
    """One file's commits in a round: wall and CPU seconds of each, and merges among them."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    merges: int = 0


async def time_writers(
    files: dict[str, Path], results: dict[str, list[PageResult]], batch: int
) -> dict[str, Timings]:
    """Commit each file's `results` through the real writer's transaction
    (`Storage._commit`), `batch` results at a time, the files taking turns batch by batch
    (so that both meet the same load of a shared machine); return each file's timings, in
    seconds, wall and CPU (of both the event loop's and SQLite's threads), the first batch
    left out (it creates the item table)."""
    settings = load_settings(
        overrides={"max_pages": MAX_PAGES, "max_pages_per_host": MAX_PAGES_PER_HOST}
    ).settings
    timings = {name: Timings() for name in files}
    async with contextlib.AsyncExitStack() as stack:
        storages: dict[str, Storage] = {}
        for name, db in files.items():
            conn = await open_database(db)
            stack.push_async_callback(conn.close)
            storages[name] = Storage(
                conn, run_id=1, settings=settings, stats=Stats(), on_committed=lambda n: None
            )
            await storages[name].load_counts()
        count = len(next(iter(results.values()))) // batch
        for index in range(count):
            turn = list(files) if index % 2 else list(reversed(files))
            for name in turn:
                storage, timed = storages[name], timings[name]
                writes = results[name][index * batch : (index + 1) * batch]
                merging = MERGE[0] in storage._merges
                started, cpu_started = time.perf_counter(), time.process_time()
                await storage._commit(writes)
                if index:
                    timed.wall.append(time.perf_counter() - started)
                    timed.cpu.append(time.process_time() - cpu_started)
                    timed.merges += merging
        for name, storage in storages.items():
            stats, done = storage._stats, count * batch
            if stats.done != done or stats.admitted != done * NEW_PER_PAGE:
                raise AssertionError(f"{name}: done {stats.done}, admitted {stats.admitted}")
            await check_counters(storage._conn)
    return timings


_COUNTED_BY_HOST: Final = (
    "SELECT host, count(*) FROM requests WHERE state != 'skipped' GROUP BY host"
)
_KEPT_BY_HOST: Final = "SELECT host, admitted FROM hosts WHERE admitted > 0"


async def check_counters(conn: aiosqlite.Connection) -> None:
    """The trigger-kept counters equal the counts they stand for (a sanity check)."""
    queries = (
        "SELECT (SELECT admitted FROM frontier_counts) "
        "= (SELECT count(*) FROM requests WHERE state != 'skipped')",
        f"SELECT NOT EXISTS ({_COUNTED_BY_HOST} EXCEPT {_KEPT_BY_HOST}) "
        f"AND NOT EXISTS ({_KEPT_BY_HOST} EXCEPT {_COUNTED_BY_HOST})",
    )
    for sql in queries:
        async with conn.execute(sql) as cursor:
            row = await cursor.fetchone()
        if not row or not row[0]:
            raise AssertionError(f"counters disagree: {sql}")


def time_count(db: Path, repeats: int = 5) -> float:
    """Median seconds of the old per-batch count over `requests`."""
    times = []
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA cache_size = -32000")
        for _ in range(repeats):
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM requests WHERE state != 'skipped'").fetchone()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def pend_only(db: Path, ids: Sequence[int]) -> None:
    """Leave pending exactly the requests `ids` (consecutive) of `db`: the others are marked
    done, as if a crawl had fetched them, and those of `ids` that were done are pending
    again."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE requests SET state = 'done', attempts = 1, "
            "finished_at = '2026-01-01T00:00:01.000+00:00' "
            "WHERE state = 'pending' AND id NOT BETWEEN ? AND ?",
            (ids[0], ids[-1]),
        )
        conn.execute(
            "UPDATE requests SET state = 'pending', attempts = 0, finished_at = NULL "
            "WHERE id BETWEEN ? AND ? AND state = 'done'",
            (ids[0], ids[-1]),
        )


def rows_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=250, help="results per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--keep-pending",
        action="store_true",
        help="let the full file's frontier grow (the fill's pending rows, and each round's)",
    )
    args = parser.parse_args()
    per_run = args.batches * args.batch
    settings = load_settings().settings
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp_name:
        tmp = Path(tmp_name)
        full = tmp / "full.db"
        started = time.perf_counter()
        pending_ids = asyncio.run(
            create(full, rows=args.rows, hosts=args.hosts, pending=per_run * args.rounds + 1000)
        )
        print(
            f"filled {full.name}: {args.rows:,} requests on {args.hosts:,} hosts in "
            f"{time.perf_counter() - started:.1f} s ({full.stat().st_size / 2**20:.0f} MB)",
            flush=True,
        )
        wall: dict[str, list[float]] = {"empty": [], "full": []}
        cpu: dict[str, list[float]] = {"empty": [], "full": []}
        merges: dict[str, int] = {"empty": 0, "full": 0}
        sizes: dict[str, list[int]] = {"empty": [], "full": []}
        for round_number in range(args.rounds):
            ids = pending_ids[round_number * per_run : (round_number + 1) * per_run]
            empty = tmp / f"empty{round_number}.db"
            # The empty file holds only the requests this run finishes, with the same ids.
            asyncio.run(create(empty, rows=0, hosts=args.hosts, pending=0))
            with sqlite3.connect(empty) as conn:
                conn.executemany(
                    "INSERT INTO requests (id, url, fingerprint, host, callback, depth, state, "
                    "crawl_id, discovered_at) VALUES (?, ?, ?, ?, 'parse', 1, 'pending', 1, "
                    "'2026-01-01T00:00:00.000+00:00')",
                    (
                        (i, f"http://{h}/p/{i}", i, h)
                        for i in ids
                        for h in (host((i - 1) % args.hosts),)
                    ),
                )
            if not args.keep_pending:
                pend_only(full, ids)
            files = {"empty": empty, "full": full}
            results = {
                name: make_results(
                    ids,
                    hosts=args.hosts,
                    batch=args.batch,
                    round_number=round_number,
                    frontier=Frontier(settings, WriterBatchSpider(), []),
                )
                for name in files
            }
            for name, db in files.items():
                sizes[name].append(rows_in(db))
            for name, timed in asyncio.run(time_writers(files, results, args.batch)).items():
                wall[name] += timed.wall
                cpu[name] += timed.cpu
                merges[name] += timed.merges
                print(
                    f"round {round_number + 1} {name:5} ({sizes[name][-1]:>9,} requests): "
                    f"wall mean {statistics.mean(timed.wall) * 1000:.1f} ms, "
                    f"median {statistics.median(timed.wall) * 1000:.1f} ms, "
                    f"p90 {p90(timed.wall) * 1000:.1f} ms; "
                    f"CPU mean {statistics.mean(timed.cpu) * 1000:.1f} ms, "
                    f"median {statistics.median(timed.cpu) * 1000:.1f} ms per batch; "
                    f"{timed.merges} merges",
                    flush=True,
                )
        count_empty = time_count(tmp / f"empty{args.rounds - 1}.db")
        count_full = time_count(full)
    figures = {name: [summary(wall[name]), summary(cpu[name])] for name in ("empty", "full")}
    timed_batches = len(wall["full"])

    def cells(values: list[list[float]]) -> str:
        return " | ".join(f"{v * 1000:.1f} ms" for kind in values for v in kind)

    ratios = " | ".join(
        f"{f / e:.2f}"
        for e_kind, f_kind in zip(figures["empty"], figures["full"], strict=True)
        for e, f in zip(e_kind, f_kind, strict=True)
    )
    table = [
        "| file | merges | wall mean | wall median | wall p90 | CPU mean | CPU median | CPU p90 |",
        "|---|---|---|---|---|---|---|---|",
        f"| empty | {merges['empty']} | {cells(figures['empty'])} |",
        f"| {args.rows:,} requests | {merges['full']} | {cells(figures['full'])} |",
        f"| full / empty | | {ratios} |",
    ]
    print(
        f"\nper batch of {args.batch} pages ({args.batch * ITEMS_PER_PAGE} items, "
        f"{args.batch * (NEW_PER_PAGE + KNOWN_PER_PAGE)} discovered requests), "
        f"{timed_batches} timed batches of each file over {args.rounds} alternating rounds "
        f"(merges: how many of them merged the fingerprint set):"
    )
    print(*table, sep="\n")
    old = (
        f"before the counters, `SELECT count(*) FROM requests WHERE state != 'skipped'` once "
        f"per batch: {count_empty * 1000:.1f} ms on the last empty file "
        f"({sizes['empty'][-1] + args.batches * args.batch * NEW_PER_PAGE:,} requests), "
        f"{count_full * 1000:.1f} ms on the full one"
    )
    print(old, flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join([*table, "", old]) + "\n")


def summary(values: Sequence[float]) -> list[float]:
    """Mean, median and 90th percentile."""
    return [statistics.mean(values), statistics.median(values), p90(values)]


if __name__ == "__main__":
    main()
