"""Where the time goes: a py-spy profile of our crawl, summed into the README's categories.

    py-spy record -r 500 -f raw -o prof.txt -- python -m crawler crawl \\
        benchmarks/bench_spider.py:BenchSpider --start-url URL -s concurrency=64 \\
        -s concurrency_per_host=64 -s obey_robots=false -s autothrottle=false -o /tmp/ours.db
    python -m benchmarks.profile_summary prof.txt

py-spy's raw format is one line per distinct stack: frames separated by ";" (outermost
first), then a space and the number of samples. Each sample of the main thread counts once,
in the first category (in the order below) that one of its frames belongs to; other threads
(SQLite's, in aiosqlite) are counted apart.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Final

CATEGORIES: Final = (
    (
        "start-up (imports, opening the database)",
        ("_find_and_load", "_get_module_details", "open_database", "start_run"),
    ),
    ("HTML parsing (Lexbor)", ("Response.tree (crawler/spider/http.py",)),
    ("charset detection", ("Response.encoding",)),
    ("link extraction", ("extract_links",)),
    ("admission of links", ("CallbackRunner._admit_batch", "CallbackRunner.admit")),
    ("items (validation, JSON)", ("CallbackRunner._route",)),
    ("the spider's own selectors", ("BenchSpider.parse",)),
    (
        "aiohttp request and response",
        ("_BaseRequestContextManager", "ClientResponse.read", "_read_ready", "ClientSession."),
    ),
    ("the fetcher around aiohttp", ("Fetcher.",)),
    ("the writer's side of each batch", ("BatchWriter.run_writer",)),
    ("feeder", ("Feeder.",)),
    ("page record", ("utc_now", "PageRecord")),
)
REST: Final = "the rest: event loop, worker loop, callback runner, garbage collector"
MAIN_THREAD: Final = "_run_module_as_main"


def summarize(raw: str) -> tuple[Counter[str], int, int]:
    """Return samples per category of the main thread, its total, and other threads' total."""
    shares: Counter[str] = Counter()
    main = other = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples, frames = int(count), stack.split(";")
        if not frames[0].startswith(MAIN_THREAD):
            other += samples
            continue
        main += samples
        name = next(
            (name for name, keys in CATEGORIES if any(k in f for f in frames for k in keys)), REST
        )
        shares[name] += samples
    return shares, main, other


def main() -> None:
    """Command line: print each category's share of the main thread's samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    args = parser.parse_args()
    shares, main_samples, other = summarize(args.profile.read_text())
    if not main_samples:
        raise SystemExit(f"{args.profile}: no samples of the main thread")
    print(f"main thread: {main_samples} samples; other threads: {other}")
    for name, samples in shares.most_common():
        print(f"{samples / main_samples * 100:5.1f}%  {name}")


if __name__ == "__main__":
    main()
