"""Our crawler against itself: this checkout and an earlier revision, in alternating runs.

``python -m benchmarks.ab --base REV --pages 5000 --rounds 5`` checks REV out into a git
worktree, generates the benchmark site once, serves it with nginx and crawls it with the
base's crawler and with this checkout's in turn (base, ours, base, ours, ...), each as
``python -m crawler crawl benchmarks/bench_spider.py:BenchSpider`` with the same settings as
``benchmarks.compare``. It prints each run's pages/s and the medians: the before/after figure
a change on the hot path states in its commit message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from benchmarks.server import StaticServer
from benchmarks.site import generate_site
from benchmarks.tools import OURS_SETTINGS

REPO_ROOT = Path(__file__).resolve().parent.parent


def _crawl(tree: Path, start_url: str, db: Path, concurrency: int) -> tuple[float, int]:
    """One crawl with the crawler in `tree`; return (seconds, pages stored)."""
    settings = [
        arg
        for key, value in OURS_SETTINGS.items()
        for arg in (
            "-s",
            f"{key}={value.format(concurrency=concurrency, crawl_concurrency=concurrency)}",
        )
    ]
    spider = "benchmarks/bench_spider.py:BenchSpider"
    command = [sys.executable, "-m", "crawler", "crawl", spider, "-o", str(db)]
    command += ["--start-url", start_url, *settings]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    with closing(sqlite3.connect(db)) as conn:
        pages = int(conn.execute("SELECT count(*) FROM pages").fetchone()[0])
    return elapsed, pages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="crawler-ab-"))
    base = work / "base"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.base],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        for tree in (base, REPO_ROOT):  # as benchmarks.tools.Ours.prepare does
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", "crawler", "spiders", "benchmarks"],
                cwd=tree,
                check=True,
            )
        generate_site(work / "site", args.pages, 1)
        rates: dict[str, list[float]] = {"base": [], "ours": []}
        with StaticServer(work / "site") as server:
            start_url = f"{server.base_url}/index.html"
            for round_number in range(1, args.rounds + 1):
                for name, tree in (("base", base), ("ours", REPO_ROOT)):
                    db = work / f"{name}-{round_number}.db"
                    elapsed, pages = _crawl(tree, start_url, db, args.concurrency)
                    rates[name].append(pages / elapsed)
                    print(f"round {round_number} {name}: {pages} pages, {pages / elapsed:,.0f}/s")
        before, after = (statistics.median(rates[n]) for n in ("base", "ours"))
        print(f"median pages/s: base {before:,.0f}, ours {after:,.0f} ({after / before - 1:+.1%})")
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base)], cwd=REPO_ROOT, check=False
        )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
