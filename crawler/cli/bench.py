"""`crawler bench`: a quick speed figure for this machine, with nothing to install.

The bundled book catalogue is served by a separate process on 127.0.0.1 (so its CPU is not
counted), and this crawler crawls it with the `books` spider into a temporary database, with
full persistence. The figures: pages/s, CPU milliseconds per page, peak memory. For the
side-by-side comparison with Scrapy and Crawlee see `benchmarks/compare.py`.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import click
from rich.console import Console
from rich.table import Table

from crawler.cli.common import (
    EXIT_INTERRUPTED,
    load_crawl_settings,
    run_with_signals,
    user_errors,
    with_start_urls,
)
from crawler.engine.crawl import Crawl
from crawler.errors import CrawlerError
from crawler.spider.discovery import find_spider

__all__ = ["bench", "demo_server_process"]

_SERVER_START_TIMEOUT: Final = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def demo_server_process(books: int) -> Iterator[str]:
    """Run `crawler serve-demo` in a child process; yield its base URL, stop it afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "crawler", "serve-demo", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--size", str(books)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + _SERVER_START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise CrawlerError("the demo server did not start")
            time.sleep(0.05)  # synchronous set-up, before any event loop runs
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


@click.command()
@click.option("--books", default=2000, show_default=True, help="Books in the served catalogue.")
@click.option("--concurrency", default=32, show_default=True, help="Requests in flight.")
def bench(books: int, concurrency: int) -> None:
    """Measure this crawler on the bundled catalogue, served on 127.0.0.1 by a child process."""
    with user_errors(), demo_server_process(books) as base_url:
        spider = with_start_urls(find_spider("books"), [base_url])
        overrides: dict[str, object] = {
            "concurrency": str(concurrency),
            "concurrency_per_host": str(concurrency),
            "progress_interval": "3600",
        }
        settings = load_crawl_settings(spider, None, overrides).settings
        with tempfile.TemporaryDirectory(prefix="crawler-bench-") as tmp:
            run = Crawl(spider(), db=Path(tmp) / "bench.db", settings=settings, fresh=True)
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            summary = run_with_signals(run)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    pages = int(summary["pages"])
    title = f"crawler bench: {books} books, concurrency {concurrency}"
    table = Table(title=title, show_header=False)
    for name, value in [
        ("pages", f"{pages:,}"),
        ("items", f"{summary['items']:,}"),
        ("wall time", f"{wall:.2f} s"),
        ("pages/s", f"{pages / wall:,.0f}"),
        ("CPU per page", f"{cpu / max(pages, 1) * 1000:.2f} ms"),
        ("peak RSS", f"{after.ru_maxrss / 1024:.0f} MB"),
    ]:
        table.add_row(name, value)
    Console().print(table)
    if run.status == "interrupted":
        click.echo("bench interrupted: the figures are of the pages fetched until then", err=True)
        sys.exit(EXIT_INTERRUPTED)
