"""Frontier at scale: admission of 1,000,000 URLs, peak RSS with 1,000,000 pending, and
pages/s on a database already holding 1,000,000 rows versus an empty one.

    python -m benchmarks.frontier [--urls 1000000] [--pages 5000] [--rounds 2]

Each part prints one line; `--markdown FILE` also writes them as a table for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from benchmarks.measure import local_only_env, log_tail, run_measured
from benchmarks.server import StaticServer
from benchmarks.site import generate_site
from crawler import Request, Response, Spider
from crawler.frontier.gate import Frontier
from crawler.settings import load_settings
from crawler.stats import Stats
from crawler.store.fingerprints import FLUSH, MERGE
from crawler.store.runs import start_run
from crawler.store.schema import open_database
from crawler.store.writer import Seeds, Storage

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BATCH: Final = 5000


class MillionSpider(Spider):
    """Seeds `MILLION_URLS` URLs on the start URL's host (most of them 404), follows nothing."""

    name = "million"
    start_urls = ("http://127.0.0.1:8000/",)

    async def start_requests(self) -> AsyncIterator[Request]:
        """Yield the start page and `MILLION_URLS` more URLs on its host."""
        base = self.start_urls[0].rstrip("/")
        count = int(os.environ.get("MILLION_URLS", "1000000"))
        for index in range(count):
            yield Request(f"{base}/p/{index}.html?seed=frontier")

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        """Follow nothing: the frontier is what is measured."""
        for _ in ():
            yield Request(response.url)


async def measure_admission(urls: int, db: Path) -> tuple[float, float]:
    """Admit `urls` new URLs through the real gate and writer; return (wall s, CPU s)."""
    settings = load_settings(overrides={"write_batch_size": 500}).settings
    conn = await open_database(db)
    run_id = await start_run(conn, spider="admission", settings={}, fresh=True)
    storage = Storage(
        conn, run_id=run_id, settings=settings, stats=Stats(), on_committed=lambda n: None
    )
    frontier = Frontier(settings, MillionSpider(), [])
    started, cpu_started = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        group.create_task(storage.run_writer())
        seeds = Seeds()
        previous: asyncio.Future[None] | None = None
        for index in range(urls):
            request = Request(f"http://site{index % 97}.test/catalogue/item-{index}.html?ref=bench")
            frontier.admit(
                request, parent_id=None, candidates=seeds.candidates, skipped=seeds.skipped
            )
            if len(seeds.candidates) >= BATCH:  # as the engine seeds: one batch committing
                committed = await storage.submit_for_commit(seeds)
                if previous is not None:
                    await previous
                previous, seeds = committed, Seeds()
        await storage.submit_and_wait(seeds)
        if previous is not None:
            await previous
        await storage.stop_writer()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    pending = (
        await (await conn.execute("SELECT count(*) FROM requests WHERE state='pending'")).fetchone()
        or [0]
    )[0]
    await conn.close()
    if pending != urls:
        raise AssertionError(f"admitted {pending} of {urls} URLs")
    return wall, cpu


def prefill(db: Path, rows: int) -> None:
    """Give a database `rows` finished requests of another host (as a long crawl leaves it,
    its fingerprint set merged: the writer merges as the file grows)."""
    rng = random.Random(1)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO requests (url, fingerprint, host, depth, state, crawl_id, discovered_at) "
            "VALUES (?, ?, 'filler.test', 1, 'done', 1, '2026-01-01T00:00:00+00:00')",
            ((f"http://filler.test/{i}", rng.getrandbits(63)) for i in range(rows)),
        )
        for sql in FLUSH + MERGE:
            conn.execute(sql)


def crawl_command(spider: str, db: Path, start: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crawler",
        "crawl",
        spider,
        "-o",
        str(db),
        "--start-url",
        start,
        "-s",
        "concurrency=64",
        "-s",
        "concurrency_per_host=64",
        *extra,
    ]


def run_rate(base: str, db: Path, log: Path) -> float:
    """Crawl the site into `db`; return the run's pages/s as recorded in `crawls.stats`."""
    command = crawl_command("benchmarks/bench_spider.py:BenchSpider", db, f"{base}/index.html", [])
    measured = run_measured(command, cwd=REPO_ROOT, log=log, timeout=600, env=local_only_env())
    if measured.returncode != 0:
        raise RuntimeError(f"crawl failed:\n{log_tail(log)}")
    with sqlite3.connect(db) as conn:
        stats = json.loads(
            conn.execute("SELECT stats FROM crawls ORDER BY id DESC LIMIT 1").fetchone()[0]
        )
    return float(stats["pages"]) / float(stats["duration_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    lines: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-frontier-") as tmp_name:
        tmp = Path(tmp_name)
        wall, cpu = asyncio.run(measure_admission(args.urls, tmp / "admission.db"))
        lines.append(
            (
                f"admission of {args.urls:,} URLs (canonicalise, fingerprint, insert-or-ignore)",
                f"{wall:.1f} s wall, {cpu:.1f} s CPU ({args.urls / wall:,.0f} URLs/s)",
            )
        )
        print(*lines[-1], sep=": ", flush=True)

        site = tmp / "site"
        generate_site(site, args.pages)
        with StaticServer(site) as server:
            log = tmp / "million.log"
            command = crawl_command(
                f"{Path(__file__).resolve()}:MillionSpider",
                tmp / "million.db",
                f"{server.base_url}/",
                ["-s", "request_timeout=5"],
            )
            env = local_only_env({"MILLION_URLS": str(args.urls), "PYTHONPATH": str(REPO_ROOT)})
            measured = run_measured(command, cwd=REPO_ROOT, log=log, timeout=90, env=env)
            with sqlite3.connect(tmp / "million.db") as conn:
                pending = conn.execute(
                    "SELECT count(*) FROM requests WHERE state='pending'"
                ).fetchone()[0]
                done = conn.execute(
                    "SELECT count(*) FROM requests WHERE state != 'pending'"
                ).fetchone()[0]
            lines.append(
                (
                    f"peak RSS while crawling with up to {args.urls:,} URLs pending",
                    f"{measured.peak_rss_mb:.0f} MB ({pending:,} still pending, "
                    f"{done:,} finished after {measured.wall_seconds:.0f} s)",
                )
            )
            print(*lines[-1], sep=": ", flush=True)

            empty_rates, full_rates = [], []
            for round_number in range(args.rounds):
                empty_rates.append(
                    run_rate(server.base_url, tmp / f"empty{round_number}.db", tmp / "empty.log")
                )
                full_db = tmp / f"full{round_number}.db"
                asyncio.run(_create(full_db))
                prefill(full_db, args.urls)
                full_rates.append(run_rate(server.base_url, full_db, tmp / "full.log"))
            empty, full = statistics.median(empty_rates), statistics.median(full_rates)
            lines.append(
                (
                    f"pages/s, {args.pages:,}-page site, empty database (median of {args.rounds})",
                    f"{empty:,.0f}",
                )
            )
            lines.append(
                (
                    f"pages/s, same site, database already holding {args.urls:,} rows",
                    f"{full:,.0f} ({(full / empty - 1) * 100:+.1f}%)",
                )
            )
            for line in lines[-2:]:
                print(*line, sep=": ", flush=True)
    if args.markdown:
        table = ["| measurement | result |", "|---|---|", *(f"| {k} | {v} |" for k, v in lines)]
        args.markdown.write_text("\n".join(table) + "\n")


async def _create(db: Path) -> None:
    """Create an empty crawl database with the schema (and the bench spider's run row)."""
    conn = await open_database(db)
    await start_run(conn, spider="bench", settings={}, fresh=True)
    await conn.execute("UPDATE crawls SET status = 'finished'")
    await conn.close()


if __name__ == "__main__":
    main()
