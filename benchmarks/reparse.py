"""`crawler reparse` measured: pages/s with 1 and N processes, the peak memory of the whole
process tree as the stored pages grow, and where a page's time goes.

``python -m benchmarks.reparse --pages 10000 --rounds 5 --rss 10000,100000``

The database is made without a crawl: the benchmark site's pages (benchmarks/site.py, ~20 KB
of HTML, 26 internal links each), gzip-compressed as a crawl stores them, in `pages` and
`requests` rows of a real crawl database; a larger database repeats the first `--pages`
bodies under new URLs. The spider is benchmarks/bench_spider.py (a dataclass item per page,
`follow_all()` over every link). Each run reparses a fresh copy, as a subprocess
(`python -m crawler reparse … -p N -f json`); the runs alternate 1, N, 1, N… and the figures
are medians. While a run goes, the resident memory of its whole process tree (the command and
its workers) is summed from /proc every 50 ms; the peak is reported. The split runs the
reparse's parts in this process over the first database: reading chunks, gunzip, building
the selectolax tree, the callback (ChunkParser minus those two), pickling a chunk's results
there and back (what --processes N adds), and writing them (RowWriter, rolled back).
The load average (`uptime`) is printed before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from benchmarks.site import _product, _targets, page_path, render_page
from benchmarks.tools import REPO_ROOT

SPIDER: Final = "benchmarks/bench_spider.py:BenchSpider"
SITE: Final = "http://127.0.0.1:8000"


async def _create(db: Path) -> None:
    from crawler.store.schema import open_database

    await (await open_database(db)).close()


def build(db: Path, pages: int, distinct: int, seed: int = 1) -> None:
    """Write a crawl database of `pages` stored pages (`distinct` different bodies)."""
    if db.exists():
        return
    partial = db.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    asyncio.run(_create(partial))
    import sqlite3

    bodies = []
    for index in range(min(pages, distinct)):
        rng = random.Random(f"{seed}:{index}")
        product = _product(rng, index)
        html = render_page(index, product, _targets(rng, index, distinct), rng)
        bodies.append(gzip.compress(html.encode(), 5, mtime=0))
    with sqlite3.connect(partial) as conn:
        conn.execute(
            "INSERT INTO crawls (id, spider, started_at, finished_at, status, settings, stats) "
            "VALUES (1, 'bench', '2026-01-01', '2026-01-01', 'finished', '{}', '{}')"
        )
        for index in range(pages):
            url = f"{SITE}/{page_path(index)}" + (f"?copy={index}" if index >= distinct else "")
            conn.execute(
                "INSERT INTO requests (id, url, fingerprint, host, callback, depth, state, "
                "attempts, crawl_id, discovered_at, finished_at) VALUES "
                "(?, ?, ?, '127.0.0.1', 'parse', 1, 'done', 1, 1, '2026-01-01', '2026-01-01')",
                (index + 1, url, index + 1),
            )
            conn.execute(
                "INSERT INTO pages (request_id, crawl_id, url, final_url, status, content_type, "
                "encoding, size_bytes, depth, elapsed_ms, fetched_at, body) VALUES "
                "(?, 1, ?, ?, 200, 'text/html', 'utf-8', 20000, 1, 1.0, '2026-01-01', ?)",
                (index + 1, url, url, bodies[index % distinct]),
            )
    conn.close()
    partial.rename(db)


class TreeMemory:
    """Peak of the summed RSS of a process and all its descendants, polled from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self.processes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        found, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    queue += [int(child) for child in task.read_text().split()]
                except OSError:
                    continue
        return found

    def _poll(self) -> None:
        page_kb = os.sysconf("SC_PAGE_SIZE") / 1024
        while not self._done.wait(0.05):
            total = 0.0
            tree = self._tree()
            for pid in tree:
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page_kb
                except (OSError, IndexError):
                    continue
            self.peak_mb = max(self.peak_mb, total / 1024)
            self.processes = max(self.processes, len(tree))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_reparse(source: Path, work: Path, processes: int) -> dict[str, Any]:
    """Reparse a fresh copy of `source`; wall seconds, pages/s, peak tree RSS."""
    db = work / "run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, db)
    command = [sys.executable, "-m", "crawler", "reparse", SPIDER, str(db), "-f", "json"]
    command += ["-p", str(processes)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    memory = TreeMemory(process.pid)
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if process.returncode:
        raise SystemExit(f"reparse failed ({process.returncode}): {command}")
    summary = json.loads(stdout)
    pages = summary["pages"] + summary["not_parsed"]
    return {
        "processes": processes,
        "pages": pages,
        "wall_s": wall,
        "pages_per_s": pages / wall,
        "cpu_s": cpu,
        "peak_tree_rss_mb": memory.peak_mb,
        "tree_processes": memory.processes,
    }


def load() -> str:
    """The load averages over 1, 5 and 15 minutes, as `uptime` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def speed(source: Path, work: Path, rounds: int, processes: int) -> dict[int, list[dict[str, Any]]]:
    """Alternating runs with 1 and `processes` processes."""
    runs: dict[int, list[dict[str, Any]]] = {1: [], processes: []}
    for number in range(rounds):
        for count in (1, processes):
            result = run_reparse(source, work, count)
            runs[count].append(result)
            print(
                f"round {number + 1} -p {count}: {result['pages_per_s']:,.0f} pages/s "
                f"({result['wall_s']:.1f} s, CPU {result['cpu_s']:.1f} s), peak tree RSS "
                f"{result['peak_tree_rss_mb']:.0f} MB, load {load()}",
                flush=True,
            )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rss", default="", help="comma-separated page counts, e.g. 10000,100000")
    parser.add_argument("--split", action="store_true", help="measure the per-page cost split")
    parser.add_argument("--work", type=Path, default=Path("/tmp/reparse-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"load before: {load()}", flush=True)
    source = args.work / f"pages-{args.pages}.db"
    build(source, args.pages, args.pages)
    report: dict[str, Any] = {"pages": args.pages, "load_before": load()}
    if args.rounds:
        runs = speed(source, args.work, args.rounds, args.processes)
        medians = {
            count: {
                key: statistics.median(run[key] for run in values)
                for key in ("pages_per_s", "cpu_s", "peak_tree_rss_mb")
            }
            for count, values in runs.items()
        }
        report["medians"] = {str(k): v for k, v in medians.items()}
        one, many = medians[1], medians[args.processes]
        report["speedup"] = round(many["pages_per_s"] / one["pages_per_s"], 2)
        # What the CPU time allows on an idle machine with that many cores: the work of
        # one process spread over them, with what the pool adds.
        report["speedup_cpu_bound"] = round(args.processes * one["cpu_s"] / many["cpu_s"], 2)
        print(f"medians: {report['medians']}, speed-up {report['speedup']}x", flush=True)
    for size in [int(n) for n in args.rss.split(",") if n]:
        db = args.work / f"pages-{size}.db"
        build(db, size, args.pages)
        for count in (1, args.processes):
            result = run_reparse(db, args.work, count)
            report.setdefault("rss", []).append(result)
            print(
                f"{size:,} pages -p {count}: peak tree RSS {result['peak_tree_rss_mb']:.0f} MB "
                f"({result['tree_processes']} processes), {result['pages_per_s']:,.0f} pages/s, "
                f"CPU {result['cpu_s']:.1f} s, load {load()}",
                flush=True,
            )
    if args.split:
        from benchmarks.reparse_split import cost_split

        report["split_us_per_page"] = cost_split(source, args.work)
        print(f"split (µs/page): {report['split_us_per_page']}", flush=True)
    report["load_after"] = load()
    print(f"load after: {report['load_after']}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
