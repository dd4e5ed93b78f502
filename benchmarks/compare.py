"""Compare this crawler with Scrapy, Crawlee and two raw-aiohttp floors on one generated site.

``python -m benchmarks.compare --rounds 3 --pages 10000 --markdown results.md`` generates the
site, serves it with nginx on 127.0.0.1, runs the tools alternately (A B C D E, A B C D E, ...),
checks every run's items against the manifest, and prints medians with (min-max) per tool.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.measure import (
    Measurement,
    local_only_env,
    log_tail,
    machine_busy_seconds,
    run_measured,
    tree_cpu_seconds,
)
from benchmarks.report import RunResult, describe_machine, render_markdown, render_text, summarize
from benchmarks.server import StaticServer
from benchmarks.site import Manifest, generate_site
from benchmarks.tools import TOOLS, Collected, Ours, RunContext, Tool, ToolUnavailable
from benchmarks.verify import Verdict, check_fetch_only, check_items


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(TOOLS),
        help=f"comma-separated tools to run, in this order (default: {','.join(TOOLS)})",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternating runs")
    parser.add_argument("--pages", type=int, default=10_000, help="pages in the generated site")
    parser.add_argument("--seed", type=int, default=1, help="site generator seed")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, all tools")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--keep", action="store_true", help="keep the site and run directories")
    parser.add_argument(
        "--server", choices=("auto", "nginx", "aiohttp"), default="auto", help="static server"
    )
    parser.add_argument("--server-cpu", type=int, help="pin the static server to this CPU")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds before a run is killed"
    )
    parser.add_argument(
        "--ours-setting",
        action="append",
        metavar="KEY=VALUE",
        help="a -s setting for our crawler (ours, ours-2p); given at least once, replaces "
        "tools.OURS_SETTINGS",
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.tools = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in args.tools if name not in TOOLS]:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    if bad := [setting for setting in args.ours_setting or () if "=" not in setting]:
        parser.error(f"--ours-setting needs KEY=VALUE, got {bad[0]!r}")
    return args


def judge(collected: Collected, manifest: Manifest) -> Verdict:
    """Decide whether a finished run's output is complete and correct."""
    if collected.problem:
        return Verdict(ok=False, reason=collected.problem)
    if collected.items is None:
        return check_fetch_only(collected.pages or 0, collected.errors, manifest)
    return check_items(collected.items, manifest)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Counters read before and after a run."""

    requests: int | None
    server_cpu: float
    machine_busy: float


def _snapshot(server: StaticServer) -> _Snapshot:
    return _Snapshot(
        requests=server.requests_served(),
        server_cpu=tree_cpu_seconds(server.pid) if server.pid else 0.0,
        machine_busy=machine_busy_seconds(),
    )


def run_once(
    tool: Tool, ctx: RunContext, server: StaticServer, manifest: Manifest, timeout: float
) -> RunResult:
    """Run ``tool`` once in ``ctx.run_dir``, measure it, and judge its output."""
    ctx.run_dir.mkdir(parents=True)
    command, cwd = tool.command(ctx)
    log = ctx.run_dir / "output.log"
    before = _snapshot(server)
    measurement = run_measured(command, cwd=cwd, log=log, timeout=timeout, env=local_only_env())
    after = _snapshot(server)
    collected = _collect(tool, ctx, measurement, log, timeout)
    # The status requests count themselves; without a server counter, trust the tool's count.
    pages = (
        collected.pages
        if before.requests is None or after.requests is None
        else after.requests - before.requests - 1
    )
    verdict = judge(collected, manifest)
    if not collected.problem and collected.pages is not None and collected.pages != pages:
        remarks = [verdict.reason, f"tool counted {collected.pages} pages"]
        verdict = Verdict(ok=verdict.ok, reason="; ".join(filter(None, remarks)))
    server_cpu = after.server_cpu - before.server_cpu
    busy = after.machine_busy - before.machine_busy
    return RunResult(
        tool=tool.name,
        round=0,
        measurement=measurement,
        pages=pages,
        items=None if collected.items is None else len(collected.items),
        verdict=verdict,
        server_cpu_seconds=server_cpu,
        other_cpu_seconds=max(0.0, busy - server_cpu - measurement.cpu_seconds),
    )


def _collect(
    tool: Tool, ctx: RunContext, measurement: Measurement, log: Path, timeout: float
) -> Collected:
    """Read back a run's results, or say why there are none (printing the end of its log)."""
    if measurement.timed_out:
        collected = Collected(pages=None, items=None, problem=f"timed out after {timeout:.0f} s")
    elif measurement.returncode != 0:
        last_line = log_tail(log, lines=1)
        problem = f"exit code {measurement.returncode}" + (f": {last_line}" if last_line else "")
        collected = Collected(pages=None, items=None, problem=problem)
    else:
        collected = tool.collect(ctx)
    if collected.problem:
        print(f"  {tool.name} failed: {collected.problem}; end of its output:", file=sys.stderr)
        print("    " + log_tail(log).replace("\n", "\n    "), file=sys.stderr)
    return collected


def _progress(result: RunResult, rounds: int, site_pages: int) -> str:
    m = result.measurement
    head = f"[{result.round}/{rounds}] {result.tool:<12} {m.wall_seconds:7.1f} s"
    if not result.verdict.ok:
        return f"{head}  INVALID: {result.verdict.reason}"
    return (
        f"{head} {site_pages / m.wall_seconds:7.0f} pages/s  CPU {m.cpu_seconds:6.1f} s  "
        f"RSS {m.peak_rss_mb:5.0f} MB  pages {result.pages}  items {result.items}  "
        f"server CPU {result.server_cpu_seconds:.1f} s  others {result.other_cpu_seconds:.1f} s"
        + (f"  ({result.verdict.reason})" if result.verdict.reason else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; return 0, or 1 if no tool produced a valid run."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        return _compare(args, work)
    finally:
        if args.keep:
            print(f"kept site and runs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _prepare(
    names: Sequence[str], ours_settings: Sequence[str] | None
) -> tuple[list[Tool], dict[str, str]]:
    """Install or check each named tool; return those that can run, and why the others cannot."""
    available = dict(TOOLS)
    if ours_settings:
        pairs = (setting.partition("=") for setting in ours_settings)
        settings = {key: value for key, _, value in pairs}
        for processes in (1, 2):
            tool = Ours(settings, processes=processes)
            available[tool.name] = tool
    tools: list[Tool] = []
    not_run: dict[str, str] = {}
    for name in names:
        try:
            available[name].prepare()
        except ToolUnavailable as error:
            print(f"{name}: cannot run:\n{error}", file=sys.stderr)
            not_run[name] = str(error).splitlines()[-1] if str(error) else "unavailable"
        else:
            tools.append(available[name])
    return tools, not_run


def _setup_lines(
    args: argparse.Namespace, server: str, manifest: Manifest, tools: Sequence[Tool]
) -> list[str]:
    """Describe the machine, server, site, settings and tool versions for the Markdown."""
    pinned = f", pinned to CPU {args.server_cpu}" if args.server_cpu is not None else ""
    pages = len(manifest.pages)
    return [
        *describe_machine(),
        f"Server: {server} on 127.0.0.1{pinned}",
        f"Site: {pages:,} pages, {manifest.total_bytes / 1e6:.0f} MB, "
        f"{manifest.internal_links / pages:.0f} internal links per page, seed {manifest.seed}",
        f"Concurrency {args.concurrency} for every tool; {args.rounds} round(s), "
        f"run in the order {', '.join(tool.name for tool in tools)} each round",
        *(
            f"{tool.name}: "
            + ", ".join(f"{name} {version}" for name, version in tool.versions().items())
            for tool in tools
        ),
    ]


def _compare(args: argparse.Namespace, work: Path) -> int:
    print(f"generating {args.pages} pages in {work / 'site'} ...", flush=True)
    manifest = generate_site(work / "site", args.pages, args.seed)
    tools, not_run = _prepare(args.tools, args.ours_setting)
    results: list[RunResult] = []
    with StaticServer(work / "site", kind=args.server, cpu=args.server_cpu) as server:
        print(f"serving at {server.base_url} with {server.version}", flush=True)
        for round_number in range(1, args.rounds + 1):
            for tool in tools:
                ctx = RunContext(
                    base_url=server.base_url,
                    site=work / "site",
                    run_dir=work / "runs" / f"{tool.name}-{round_number}",
                    concurrency=args.concurrency,
                )
                result = run_once(tool, ctx, server, manifest, args.timeout)
                result = replace(result, round=round_number)
                results.append(result)
                print(_progress(result, args.rounds, len(manifest.pages)), flush=True)
                if not args.keep:
                    shutil.rmtree(ctx.run_dir, ignore_errors=True)
    rows = summarize(results, len(manifest.pages), not_run)
    print()
    print(render_text(rows))
    if args.markdown:
        details = "1 worker, sendfile, no access log" if server.kind == "nginx" else "fallback"
        setup = _setup_lines(args, f"{server.version} ({details})", manifest, tools)
        command = "python -m benchmarks.compare " + shlex.join(args.argv)
        args.markdown.write_text(render_markdown(rows, setup, command), encoding="utf-8")
        print(f"\nwrote {args.markdown}")
    return 0 if any(result.verdict.ok for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
