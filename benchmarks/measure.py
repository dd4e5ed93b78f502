"""Run one benchmark process and measure it: wall time, CPU time and peak RSS from ``os.wait4``."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_PROXY_VARIABLES: Final = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy")


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """How one process ran."""

    returncode: int
    """Exit code; negative for a signal (-9 after a timeout)."""
    wall_seconds: float
    cpu_seconds: float
    """User plus system time of the process and the children it waited for."""
    peak_rss_mb: float
    """Largest resident set size of the process (or of one of its waited-for children)."""
    timed_out: bool


def local_only_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without proxy settings, so traffic stays on 127.0.0.1."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _PROXY_VARIABLES and key.lower() != "no_proxy"
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


def run_measured(
    command: list[str], *, cwd: Path, log: Path, timeout: float, env: Mapping[str, str]
) -> Measurement:
    """Run ``command`` to completion with output to ``log`` and return its measurements.

    The process is killed after ``timeout`` seconds. Resource usage comes from ``os.wait4``
    on this one child, so concurrent work elsewhere on the machine is not counted.
    """
    started = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT
        )
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measurement(
        returncode=process.returncode,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        timed_out=wall >= timeout and process.returncode < 0,
    )


def log_tail(log: Path, lines: int = 15) -> str:
    """Return the last ``lines`` lines of a log file (for failure messages)."""
    if not log.exists():
        return ""
    text = log.read_text(encoding="utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def machine_busy_seconds() -> float:
    """Return the CPU seconds all CPUs have spent busy since boot (from ``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds used so far by process ``pid`` and its direct children."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1] is the parent
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total
