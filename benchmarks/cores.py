"""Where the cores go during a crawl: per-thread CPU of our crawler and of the server.

``python -m benchmarks.cores --pages 10000 --processes 2`` generates the benchmark site, serves
it with nginx (see server.py), crawls it with our crawler (the same command as compare.py's
``ours``, plus ``--processes N``) and reads ``/proc/PID/task/TID/stat`` every ``--interval``
seconds: the CPU each thread of the crawl's processes and of the server used in that
interval, in cores. It prints one line per interval and, for the steady middle of the crawl
(without its first and last fifth), the median of each: every crawler process's event loop
(its main thread), its other threads (SQLite's, in aiosqlite), the server, and the total.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Final

from benchmarks.measure import local_only_env
from benchmarks.server import StaticServer
from benchmarks.site import generate_site
from benchmarks.tools import OURS_SETTINGS, REPO_ROOT, Ours, RunContext

_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc/PID/task/*/children."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue  # ended meanwhile
    return found


def _thread_seconds(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds used so far by each thread of `pid`, keyed by (pid, tid)."""
    seconds = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[(pid, int(stat.parent.name))] = (int(fields[11]) + int(fields[12])) / _TICKS
    return seconds


def _role(pid: int, tid: int, server_pids: set[int], crawler_pids: list[int]) -> str:
    if pid in server_pids:
        return "server"
    if pid not in crawler_pids:
        return "parent (waits for its crawlers)"
    number = crawler_pids.index(pid) + 1
    return f"crawler {number} event loop" if pid == tid else f"crawler {number} other threads"


def sample(command: list[str], server_pid: int, interval: float) -> list[dict[str, float]]:
    """Run `command`; return, per interval, the cores each role used."""
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=local_only_env(), stdout=subprocess.DEVNULL
    )
    server_pids = set(_descendants(server_pid))
    previous: dict[tuple[int, int], float] = {}
    for pid in server_pids:
        previous.update(_thread_seconds(pid))
    rows: list[dict[str, float]] = []
    while process.poll() is None:
        time.sleep(interval)
        tree = _descendants(process.pid)
        # With --processes the parent only waits: the crawlers are its children.
        crawlers = tree[1:] if len(tree) > 1 else tree
        row: dict[str, float] = defaultdict(float)
        for pid in [*tree, *server_pids]:
            for (owner, tid), seconds in _thread_seconds(pid).items():
                used = seconds - previous.get((owner, tid), 0.0)
                previous[(owner, tid)] = seconds
                row[_role(owner, tid, server_pids, crawlers)] += used / interval
        rows.append(dict(row))
    return rows


def main() -> None:
    """Command line: generate, serve, crawl and sample; print the intervals and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cores-") as tmp_name:
        tmp = Path(tmp_name)
        generate_site(tmp / "site", args.pages)
        with StaticServer(tmp / "site") as server:
            ctx = RunContext(
                base_url=server.base_url, site=tmp / "site", run_dir=tmp, concurrency=64
            )
            command, _ = Ours(OURS_SETTINGS, processes=args.processes).command(ctx)
            assert server.pid is not None, "the server runs in a process of its own"
            rows = sample(command, server.pid, args.interval)
    roles = sorted({role for row in rows for role in row})
    for index, row in enumerate(rows):
        cells = "  ".join(f"{role} {row.get(role, 0.0):.2f}" for role in roles)
        print(f"{(index + 1) * args.interval:6.2f} s  {cells}  total {sum(row.values()):.2f}")
    middle = rows[len(rows) // 5 : len(rows) - len(rows) // 5] or rows
    print(f"\nsteady middle ({len(middle)} intervals of {args.interval} s), median cores:")
    for role in roles:
        print(f"  {role:32s} {statistics.median(row.get(role, 0.0) for row in middle):.2f}")
    print(f"  {'total':32s} {statistics.median(sum(row.values()) for row in middle):.2f}")


if __name__ == "__main__":
    main()
