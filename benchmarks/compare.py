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
from pathlib import Path

from benchmarks.measure import Measurement, local_only_env, log_tail, run_measured
from benchmarks.report import RunResult, describe_machine, render_markdown, render_text, summarize
from benchmarks.server import StaticServer
from benchmarks.site import Manifest, generate_site
from benchmarks.tools import TOOLS, Collected, RunContext, Tool, ToolUnavailable
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
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.tools = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in args.tools if name not in TOOLS]:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    return args


def judge(collected: Collected, manifest: Manifest) -> Verdict:
    """Decide whether a finished run's output is complete and correct."""
    if collected.problem:
        return Verdict(ok=False, reason=collected.problem)
    if collected.items is None:
        return check_fetch_only(collected.pages or 0, collected.errors, manifest)
    return check_items(collected.items, manifest)


def run_once(
    tool: Tool, ctx: RunContext, server: StaticServer, manifest: Manifest, timeout: float
) -> tuple[Measurement, int, Collected, Verdict]:
    """Run ``tool`` once in ``ctx.run_dir``, measure it, and judge its output.

    Returns:
        The measurement, the requests the server answered meanwhile, what the run left behind,
        and the verdict on it.
    """
    ctx.run_dir.mkdir(parents=True)
    command, cwd = tool.command(ctx)
    log = ctx.run_dir / "output.log"
    before = server.requests_served()
    measurement = run_measured(command, cwd=cwd, log=log, timeout=timeout, env=local_only_env())
    served = server.requests_served() - before - 1  # minus the status request itself
    if measurement.timed_out:
        collected = Collected(pages=None, items=None, problem=f"timed out after {timeout:.0f} s")
    elif measurement.returncode != 0:
        collected = Collected(pages=None, items=None, problem=f"exit code {measurement.returncode}")
    else:
        collected = tool.collect(ctx)
    verdict = judge(collected, manifest)
    if collected.problem:
        print(f"  {tool.name} failed: {collected.problem}; end of its output:", file=sys.stderr)
        print("    " + log_tail(log).replace("\n", "\n    "), file=sys.stderr)
    elif collected.pages is not None and collected.pages != served:
        verdict = Verdict(
            ok=verdict.ok,
            reason="; ".join(
                filter(None, [verdict.reason, f"tool counted {collected.pages} pages"])
            ),
        )
    return measurement, served, collected, verdict


def _progress(result: RunResult, rounds: int, site_pages: int) -> str:
    m = result.measurement
    status = "ok" if result.verdict.ok else f"INVALID: {result.verdict.reason}"
    return (
        f"[{result.round}/{rounds}] {result.tool:<12} {m.wall_seconds:7.1f} s "
        f"{site_pages / m.wall_seconds:7.0f} pages/s  CPU {m.cpu_seconds:6.1f} s  "
        f"RSS {m.peak_rss_mb:5.0f} MB  pages {result.pages}  items {result.items}  {status}"
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


def _compare(args: argparse.Namespace, work: Path) -> int:
    print(f"generating {args.pages} pages in {work / 'site'} ...", flush=True)
    manifest = generate_site(work / "site", args.pages, args.seed)
    tools: list[Tool] = []
    not_run: dict[str, str] = {}
    for name in args.tools:
        try:
            TOOLS[name].prepare()
        except ToolUnavailable as error:
            print(f"{name}: cannot run:\n{error}", file=sys.stderr)
            not_run[name] = str(error).splitlines()[-1] if str(error) else "unavailable"
        else:
            tools.append(TOOLS[name])
    results: list[RunResult] = []
    with StaticServer(work / "site", kind=args.server, cpu=args.server_cpu) as server:
        print(f"serving at {server.base_url} with {server.version}", flush=True)
        for round_ in range(1, args.rounds + 1):
            for tool in tools:
                ctx = RunContext(
                    base_url=server.base_url,
                    site=work / "site",
                    run_dir=work / "runs" / f"{tool.name}-{round_}",
                    concurrency=args.concurrency,
                )
                measurement, served, collected, verdict = run_once(
                    tool, ctx, server, manifest, args.timeout
                )
                result = RunResult(
                    tool=tool.name,
                    round=round_,
                    measurement=measurement,
                    pages=served,
                    items=None if collected.items is None else len(collected.items),
                    verdict=verdict,
                )
                results.append(result)
                print(_progress(result, args.rounds, len(manifest.pages)), flush=True)
                if not args.keep:
                    shutil.rmtree(ctx.run_dir, ignore_errors=True)
        server_line = f"Server: {server.version} on 127.0.0.1"
    rows = summarize(results, len(manifest.pages), not_run)
    print()
    print(render_text(rows))
    if args.markdown:
        machine = [
            *describe_machine(),
            server_line
            + (f", pinned to CPU {args.server_cpu}" if args.server_cpu is not None else ""),
            f"Site: {len(manifest.pages):,} pages, {manifest.total_bytes / 1e6:.0f} MB, "
            f"{manifest.internal_links / len(manifest.pages):.0f} internal links per page, "
            f"seed {manifest.seed}",
            f"Concurrency {args.concurrency} for every tool; {args.rounds} round(s), "
            f"run in the order {', '.join(tool.name for tool in tools)} each round",
            *(
                f"{tool.name}: "
                + ", ".join(f"{name} {version}" for name, version in tool.versions().items())
                for tool in tools
            ),
        ]
        command = "python -m benchmarks.compare " + shlex.join(args.argv)
        args.markdown.write_text(render_markdown(rows, machine, command), encoding="utf-8")
        print(f"\nwrote {args.markdown}")
    return 0 if any(result.verdict.ok for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
