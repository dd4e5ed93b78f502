"""Turn the runs of a comparison into the results table (plain text and Markdown)."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.measure import Measurement
from benchmarks.verify import Verdict

HEADERS: Final = (
    "tool",
    "pages",
    "items",
    "wall s",
    "pages/s",
    "CPU s / 1k pages",
    "peak RSS MB",
    "vs Scrapy",
    "notes",
)
_NONE: Final = "-"


def _noise_limit(measurement: Measurement) -> float:
    """CPU seconds other processes may use during a run before its figures are flagged noisy."""
    return max(0.5, 0.1 * measurement.wall_seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One run of one tool in one round, judged."""

    tool: str
    round: int
    measurement: Measurement
    pages: int | None
    """Requests the server answered during the run (or the tool's own count)."""
    items: int | None
    verdict: Verdict
    server_cpu_seconds: float
    """CPU time the static server used during the run."""
    other_cpu_seconds: float
    """CPU time the rest of the machine used during the run: not ours, a sign of noise."""


def _spread(values: Sequence[float], digits: int) -> str:
    """Format ``median (min-max)``, or just the value when all runs agree."""
    median = f"{statistics.median(values):,.{digits}f}"
    low, high = f"{min(values):,.{digits}f}", f"{max(values):,.{digits}f}"
    return median if low == high else f"{median} ({low}-{high})"


def _counts(values: Sequence[int | None]) -> str:
    known = [value for value in values if value is not None]
    return _spread(known, 0) if known else _NONE


def _measured(runs: Sequence[RunResult], value: Callable[[Measurement], float], digits: int) -> str:
    return _spread([value(run.measurement) for run in runs], digits)


def summarize(
    results: Sequence[RunResult], site_pages: int, not_run: dict[str, str]
) -> list[list[str]]:
    """Return one table row per tool: medians with (min-max) over rounds, or why there are none.

    pages/s and CPU per 1,000 pages use the site's page count, so that a tool that fetched
    duplicates is not credited for them. A tool with any incorrect run gets no speed figures.
    """
    tools = list(dict.fromkeys(result.tool for result in results))
    speeds = {
        tool: statistics.median(
            site_pages / r.measurement.wall_seconds for r in results if r.tool == tool
        )
        for tool in tools
        if all(r.verdict.ok for r in results if r.tool == tool)
    }
    rows = []
    for tool in tools:
        runs = [result for result in results if result.tool == tool]
        pages, items = _counts([r.pages for r in runs]), _counts([r.items for r in runs])
        notes = "; ".join(dict.fromkeys(r.verdict.reason for r in runs if r.verdict.reason))
        if noisy := [r for r in runs if r.other_cpu_seconds > _noise_limit(r.measurement)]:
            busiest = max(r.other_cpu_seconds for r in noisy)
            noise = f"other processes busy in {len(noisy)} run(s), up to {busiest:.0f} CPU s"
            notes = f"{notes}; {noise}" if notes else noise
        if tool not in speeds:
            rows.append([tool, pages, items, *[_NONE] * 5, f"no figures: {notes}"])
            continue

        ratio = f"{speeds[tool] / speeds['scrapy']:.2f}x" if "scrapy" in speeds else _NONE
        rows.append(
            [
                tool,
                pages,
                items,
                _measured(runs, lambda m: m.wall_seconds, 1),
                _measured(runs, lambda m: site_pages / m.wall_seconds, 0),
                _measured(runs, lambda m: 1000 * m.cpu_seconds / site_pages, 2),
                _measured(runs, lambda m: m.peak_rss_mb, 0),
                ratio,
                notes,
            ]
        )
    rows += [[tool, *[_NONE] * 7, f"not run: {reason}"] for tool, reason in not_run.items()]
    return rows


def render_text(rows: Sequence[Sequence[str]]) -> str:
    """Render the rows as an aligned plain-text table."""
    table = [list(HEADERS), *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(HEADERS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def render_markdown(rows: Sequence[Sequence[str]], machine: Sequence[str], command: str) -> str:
    """Render the rows as a Markdown table, with the machine description and the command."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(
        [
            "## Benchmark results",
            "",
            *(f"- {line}" for line in machine),
            "",
            *lines,
            "",
            "Medians over rounds with (min-max). pages = requests the server answered; "
            "pages/s = site pages / wall seconds; CPU = user + system time of the crawler's "
            "process; peak RSS from `wait4`. A tool with missing or wrong items gets no figures.",
            "",
            f"Command: `{command}`",
            "",
        ]
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return "unknown RAM"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def describe_machine() -> list[str]:
    """Return lines describing the CPU, memory, OS and Python running the benchmark."""
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} cores; {_memory_gib()}",
        f"OS: {_os_name()}, Linux {platform.release()}",
        f"Python: {platform.python_version()} (all tools)",
    ]
