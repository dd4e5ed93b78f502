"""`crawler crawl --processes N`: several crawler processes sharing one crawl database.

Each process is an ordinary crawl of the same spider into the same file: it claims pending
requests in a transaction with a lease (so no request is fetched twice, and a dead process's
claims return to the frontier), de-duplicates through the shared unique index, and records
its own run in `crawls`. A process ends when nothing is pending in the file and nothing it
claimed is unfinished, so all of them finish together. This module only starts the processes,
forwards Ctrl-C to them and sums their runs into one summary.

The processes are forked from the command's own process once it has loaded the spider and the
settings: each starts crawling at once, without importing anything again. They run in a
process group of their own, so that a Ctrl-C at the terminal reaches them once, through the
parent, and not also directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Final

__all__ = ["combined_summary", "last_run_id", "run_processes"]

EXIT_INTERRUPTED: Final = 130
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def run_processes(count: int, crawl_one: Callable[[], int]) -> int:
    """Fork `count` processes that each run `crawl_one()` and exit with the code it returns;
    wait for them and return the exit code to use.

    The first and second Ctrl-C (SIGINT/SIGTERM) are passed on to every process, which then
    stops gracefully, or at once (as a single crawl does); a third one kills them. Call it
    with no other thread running (forking copies only the calling thread).
    """
    for thread in threading.enumerate():  # e.g. aiosqlite's, just closed: let it end first
        if thread is not threading.current_thread():
            thread.join(timeout=5)
    sys.stdout.flush()
    sys.stderr.flush()
    children = [_fork(crawl_one) for _ in range(count)]
    presses = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already finished
                os.kill(pid, signum if presses <= 2 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in _SIGNALS}
    try:
        codes = [_wait(pid) for pid in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if presses or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return next((code for code in codes if code != 0), 0)


def _fork(crawl_one: Callable[[], int]) -> int:
    """Start one child running `crawl_one()`; return its pid. The child never returns."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setpgid(0, 0)  # signals come through the parent only
        code = crawl_one()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    """Wait for a child and return its exit code (128 + N when signal N ended it)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:  # pragma: no cover - PEP 475 retries waitpid itself
            continue
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


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
