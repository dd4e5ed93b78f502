"""`crawler crawl --processes N`: several crawler processes sharing one crawl database.

Each process is an ordinary crawl of the same spider into the same file: it claims pending
requests in a transaction with a lease (so no request is fetched twice, and a dead process's
claims return to the frontier), de-duplicates through the shared unique index, and records
its own run in `crawls`. A process ends when nothing is pending in the file and nothing it
claimed is unfinished, so all of them finish together. This module only starts the processes,
forwards Ctrl-C to them and sums their runs into one summary.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

__all__ = ["combined_summary", "last_run_id", "run_processes"]

EXIT_INTERRUPTED: Final = 130


def run_processes(count: int, crawl_args: Sequence[str]) -> int:
    """Run `count` crawl processes with the same arguments; return the exit code to use.

    The first Ctrl-C (SIGINT/SIGTERM) is passed on to every process, which then stops
    gracefully; a second one kills them.
    """
    command = [sys.executable, "-m", "crawler", "crawl", *crawl_args]
    children = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    presses = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT if presses == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if presses or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return next((code for code in codes if code != 0), 0)


def last_run_id(db: Path) -> int:
    """Return the id of the newest run recorded in `db` (0 when there is none yet)."""
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM crawls").fetchone()[0])
    except sqlite3.Error:
        return 0  # not a crawl database: the crawl itself reports that


def combined_summary(db: Path, after_run: int) -> tuple[str, dict[str, Any]]:
    """Sum the stats of the runs recorded after run `after_run` into one summary.

    Returns the overall status (the worst of the runs) and the summed stats.
    """
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        found = conn.execute(
            "SELECT status, stats FROM crawls WHERE id > ? ORDER BY id", (after_run,)
        ).fetchall()
        pending = conn.execute("SELECT count(*) FROM requests WHERE state = 'pending'").fetchone()[
            0
        ]
    statuses = [status for status, _ in found]
    runs = [json.loads(stats) for _, stats in found if stats]
    total: dict[str, Any] = {"processes": len(runs)}
    for key in (
        "pages",
        "items",
        "requests_admitted",
        "requests_done",
        "requests_failed",
        "bytes_received",
        "retries",
        "rescheduled",
    ):
        total[key] = sum(int(run.get(key, 0)) for run in runs)
    for key in ("items_by_type", "skipped", "errors", "statuses"):
        merged: Counter[str] = Counter()
        for run in runs:
            merged.update(run.get(key, {}))
        total[key] = dict(sorted(merged.items()))
    total["requests_pending"] = pending
    total["duration_s"] = max((float(run.get("duration_s", 0)) for run in runs), default=0.0)
    total["pages_per_second"] = (
        round(total["pages"] / total["duration_s"], 1) if total["duration_s"] else 0.0
    )
    order = ["failed", "crashed", "interrupted", "stopped", "running", "finished"]
    status = min(statuses, key=order.index) if statuses else "failed"
    return status, total
