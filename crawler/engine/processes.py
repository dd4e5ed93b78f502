"""`crawler crawl --processes N`: several crawler processes sharing one crawl database.

Each process is an ordinary crawl of the same spider into the same file: it claims pending
requests in a transaction with a lease (so no request is fetched twice, and a dead process's
claims return to the frontier), de-duplicates through the shared unique index, and records
its own run in `crawls`. A process ends when nothing is pending in the file and nothing it
claimed is unfinished, so all of them finish together. This module starts the processes,
forwards Ctrl-C to them, notices those that die, and sums their runs into one summary.

**Forking, and what must not cross it.** The workers are forked from the command's own
process once it has loaded the spider and the settings, not started as new interpreters
(multiprocessing's spawn or forkserver): each starts crawling at once instead of importing
everything again (~0.3 s each), and a spider class made at run time (`--start-url` makes
one, a spider file is loaded by path) need not be pickled, which it often cannot be. The
price is that a fork copies everything the parent holds, and SQLite forbids carrying an open
connection across fork(): the child gets the descriptors but not the POSIX locks, along with
SQLite's per-process bookkeeping of the file (its open inodes, the -shm mapping, the locks it
believes it holds); the child's own connection then reuses that mapping without holding its
locks, and closing any descriptor of the file drops all of a process's locks on it. Workers
so forked, still running after their parent was killed, let the next crawl rebuild the WAL
index under them: `database disk image is malformed`. So the parent closes every connection
it opened (creating or migrating the file, reading the last run's id), waits for aiosqlite's
threads to end, and refuses to fork while `/proc/self/fd` or `/proc/self/maps` still shows
the database (Linux; elsewhere the check is skipped).

**Dying together.** The workers run in process groups of their own, so that a Ctrl-C at the
terminal reaches each of them once, through the parent, and not also directly. The parent's
death reaches them twice over: Linux sends them SIGTERM when it dies (`PR_SET_PDEATHSIG`,
checked against a parent that died before it was set), and each watches a pipe whose only
writing end the parent holds, which reads end-of-file once the parent is gone, on any POSIX
system. Either way a worker stops as on a Ctrl-C (what is in flight finishes, its run is
recorded as interrupted, its claims are released) and kills itself if that has not ended it
after `shutdown_grace` and ten seconds more.

**Noticing the dead.** A worker that dies from a signal or exits with an error is reported in
one line on stderr; the parent marks its run as crashed and returns its claims to the
frontier at once (the next run would, and the lease would expire, but the others are waiting
for them now), the other workers carry on, and the command's exit code is the dead worker's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final, final

from crawler.errors import StorageError
from crawler.records import utc_now
from crawler.store.pg_url import with_pg_errors

if TYPE_CHECKING:
    from crawler.store.pg_read import PgReader

__all__ = ["database_handles", "run_processes"]

EXIT_INTERRUPTED: Final = 130
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>
_SELF_KILL_MARGIN: Final = 10.0
"""Seconds beyond `shutdown_grace` that a worker whose parent died may take to stop."""
_SQLITE_SUFFIXES: Final = ("", "-wal", "-shm", "-journal")

_Prctl = Callable[..., int]


def run_processes(
    count: int, crawl_one: Callable[[], int], *, db: Path | str, shutdown_grace: float
) -> int:
    """Fork `count` processes that each run `crawl_one()` and exit with the code it returns;
    wait for them and return the exit code to use.

    The first and second Ctrl-C (SIGINT/SIGTERM) are passed on to every process, which then
    stops gracefully, or at once (as a single crawl does); a third one kills them. A signal
    ignored on entry stays ignored, here and in the workers. A worker whose parent dies
    stops as on a Ctrl-C, and kills itself after `shutdown_grace` + 10 s.
    Call it with no connection to `db` open and no other thread running (forking copies only
    the calling thread).

    Raises:
        RuntimeError: `db` is open in this process: forking now could corrupt it.
    """
    if handles := database_handles(db):
        raise RuntimeError(
            f"{db} is open in the parent ({', '.join(handles)}); forking workers now "
            "would carry the open database into them"
        )
    for thread in threading.enumerate():  # e.g. aiosqlite's, just closed: let it end first
        if thread is not threading.current_thread():
            thread.join(timeout=5)
    prctl = _find_prctl()
    sys.stdout.flush()
    sys.stderr.flush()
    workers = _Workers(count, db)
    # Every worker inherits both ends and closes the writing one, so the parent holds the
    # only one: the pipe reads end-of-file in every worker once the parent has died.
    watch, alive = os.pipe()
    try:
        try:
            for number in range(1, count + 1):
                pid = _fork(
                    crawl_one,
                    watch=watch,
                    alive=alive,
                    prctl=prctl,
                    stop_within=shutdown_grace + _SELF_KILL_MARGIN,
                )
                workers.running[pid] = number
        finally:
            os.close(watch)
        with _forwarding(workers.forward):
            codes = workers.wait()
    finally:
        os.close(alive)  # after an error here, the workers stop as if this process had died
    if workers.presses or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return next((code for code in codes if code != 0), 0)


@contextlib.contextmanager
def _forwarding(forward: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Handle SIGINT and SIGTERM with `forward` while inside, then put back the handlers found.
    A signal ignored on entry (SIGINT in a shell's background job) stays ignored, as it does
    in the workers, which inherit it (crawler.cli.common.stop_signals)."""
    previous = {
        sig: signal.signal(sig, forward)
        for sig in _SIGNALS
        if signal.getsignal(sig) != signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: not set from Python, cannot be put back
                signal.signal(sig, handler)


@final
class _Workers:
    """The parent's side: the workers still running, the Ctrl-Cs passed on, the dead noticed."""

    def __init__(self, count: int, db: Path | str) -> None:
        self.count = count
        self.db = db
        self.running: dict[int, int] = {}
        """pid -> worker number (from 1), while it runs: only those are sent signals, as the
        pid of one already waited for may belong to another process by now."""
        self.presses = 0

    def forward(self, signum: int, frame: FrameType | None) -> None:
        self.presses += 1
        for pid in list(self.running):
            with contextlib.suppress(ProcessLookupError):  # just ended, not yet waited for
                os.kill(pid, signum if self.presses <= 2 else signal.SIGKILL)

    def wait(self) -> list[int]:
        """Wait for every worker, in the order they end; return their exit codes (128 + N
        when signal N ended one)."""
        codes: list[int] = []
        while self.running:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - nobody else waits for them
                codes.extend(1 for _ in self.running)
                break
            number = self.running.pop(pid, None)
            if number is None:
                continue  # not a worker
            code = os.waitstatus_to_exitcode(status)  # -N when signal N ended it
            codes.append(128 - code if code < 0 else code)
            if code != 0:
                self._buried(pid, number, code)
        return codes

    def _buried(self, pid: int, number: int, code: int) -> None:
        """Free a dead worker's claims and say how it ended, unless a Ctrl-C ended it."""
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        try:
            freed = _free_claims(self.db, pid, how)
        except with_pg_errors(sqlite3.Error, StorageError) as exc:
            claims = f"its claims return to the frontier when their leases expire ({exc})"
        else:
            claims = f"{freed} requests it had claimed go back to the frontier" if freed else ""
        if self.presses and code in (EXIT_INTERRUPTED, -signal.SIGKILL):
            return  # what the Ctrl-C asked for
        left = len(self.running)
        others = {0: "no worker is left", 1: "the other one carries on"}.get(
            left, f"the other {left} carry on"
        )
        parts = [f"worker {number} of {self.count} (pid {pid}) {how}", claims, others]
        print("; ".join(part for part in parts if part), file=sys.stderr, flush=True)


def _free_claims(db: Path | str, pid: int, how: str) -> int:
    """Mark the running run of the dead worker `pid` as crashed and return its claims to the
    frontier, as the next run's start would (crawler.store.runs); return how many it had."""
    if isinstance(db, str):  # a PostgreSQL URL: one transaction, committed at close
        from crawler.store.pg_read import PgReader  # loads asyncpg (crawler.store.pg_url)

        reader = PgReader(db, write=True)
        try:
            return _free_runs(reader, pid, how)
        finally:
            reader.close()
    conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, isolation_level=None)
    with contextlib.closing(conn):
        conn.execute("PRAGMA busy_timeout = 10000")  # the others may be writing
        conn.execute("BEGIN IMMEDIATE")
        try:
            freed = _free_runs(conn, pid, how)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return freed


def _free_runs(conn: sqlite3.Connection | PgReader, pid: int, how: str) -> int:
    runs = conn.execute(
        "SELECT id FROM crawls WHERE status = 'running' AND pid = ? AND hostname = ?",
        (pid, socket.gethostname()),
    ).fetchall()
    freed = 0
    for (run_id,) in runs:
        conn.execute(
            "UPDATE crawls SET status = 'crashed', reason = ?, "
            "finished_at = coalesce(finished_at, ?) WHERE id = ?",
            (f"the process {how}", utc_now(), run_id),
        )
        freed += conn.execute(
            "UPDATE requests SET lease_owner = NULL, lease_expires = NULL "
            "WHERE lease_owner = ? AND state = 'pending'",
            (run_id,),
        ).rowcount
    return freed


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _fork(
    crawl_one: Callable[[], int],
    *,
    watch: int,
    alive: int,
    prctl: _Prctl | None,
    stop_within: float,
) -> int:
    """Start one child running `crawl_one()`; return its pid. The child never returns."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.close(alive)
        os.setpgid(0, 0)  # signals come through the parent only
        _follow_parent(parent, watch, prctl, stop_within)
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


def _follow_parent(parent: int, watch: int, prctl: _Prctl | None, stop_within: float) -> None:
    """Make this worker stop when its parent dies: SIGTERM from the kernel (Linux), and
    end-of-file on `watch` (anywhere)."""
    # prctl() is variadic: its argument goes in the width the kernel reads.
    by_kernel = prctl is not None and prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM)) == 0
    if os.getppid() != parent:  # it died before prctl() ran: no signal will come
        raise SystemExit(EXIT_INTERRUPTED)
    threading.Thread(
        target=_watch_parent,
        args=(watch, by_kernel, stop_within),
        name="parent-watch",
        daemon=True,
    ).start()


def _watch_parent(watch: int, by_kernel: bool, stop_within: float) -> None:
    """Wait for the parent's end; then stop this worker gracefully (unless the kernel's
    SIGTERM does already: a second one would cancel what is in flight), and kill it if it
    is still there `stop_within` seconds later."""
    with contextlib.suppress(OSError):
        while os.read(watch, 64):  # nothing is ever written: this waits for end-of-file
            pass
    if not by_kernel:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(stop_within)
    os.kill(os.getpid(), signal.SIGKILL)


def _find_prctl() -> _Prctl | None:
    """libc's prctl() on Linux (looked up before forking), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: _Prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def database_handles(db: Path | str) -> list[str]:
    """The descriptors and memory mappings of `db` (or its -wal, -shm or -journal file) that
    this process holds, as `/proc/self` shows them; empty where there is no /proc, and for
    a PostgreSQL URL (a socket carries no file lock; the parent closes its connections)."""
    if isinstance(db, str):
        return []
    names = {os.path.realpath(db) + suffix for suffix in _SQLITE_SUFFIXES}
    found: list[str] = []
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for fd in descriptors:
        with contextlib.suppress(OSError):  # e.g. the one listdir() used, closed since
            if (target := os.readlink(f"/proc/self/fd/{fd}")) in names:
                found.append(f"descriptor {fd}: {target}")
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and (target := fields[5].rstrip("\n")) in names:
                found.append(f"mapping: {target}")
    return found
