"""Broad crawls: memory, open descriptors and pages/s against the number of hosts.

``python -m benchmarks.broad --hosts 10000,100000,1000000`` crawls, for each count, a site of
that many hosts (``h0.broad.test`` … ``h{N-1}.broad.test``) and prints one table row per
count: pages, seconds, pages/s, the peak RSS of the largest crawler process, the RSS each
further 1,000 hosts cost it (against the smallest count), the most file descriptors one
process had open, and (for `--processes`) every crawler process's peak RSS added up.

Nothing leaves the machine: the crawler's resolver maps every generated name onto one of
16 loopback addresses (127.0.0.1 … 127.0.0.16, by host number), where one server process
(a small asyncio HTTP/1.1 server, not the bottleneck) listens on a single port and answers
by the Host header. Host *i*'s home page links to the home pages of hosts 2i+1 and 2i+2, so
the crawl discovers the hosts through links, breadth first, and to `--leaves` pages of its
own; with `--robots` (the default) every host has a robots.txt with a `Disallow`, which the
crawl fetches, obeys and stores. The crawl is the real command, `crawler crawl
benchmarks/broad_spider.py:BroadSpider`, run in its own process (with `--processes N`, its
workers too) with the resolver put in front of its fetcher; this process samples every
crawler process's RSS and descriptors in /proc four times a second.

``--database`` says where the crawl is stored: ``sqlite`` (a file, the default),
``postgresql`` (a throwaway PostgreSQL server of its own, started with tests/pgserver.py as
the `postgres` user when run as root, with PostgreSQL's durable defaults, one fresh database
per count), or a ``postgresql://`` URL of a server you run (emptied with ``--fresh`` before
each count). Only the crawler's processes are sampled, not the database server's.

Run it under the bench lock (the machine is shared):
``flock /tmp/team/bench.lock .venv/bin/python -m benchmarks.broad --hosts 10000,100000``
(``--database postgresql --processes 2`` for PostgreSQL with two workers).
Modes used internally: ``serve`` (the site) and ``crawl`` (the crawler with the resolver).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.pgserver import PostgresServer, find_bin_dir

DOMAIN: Final = "broad.test"
ADDRESSES: Final = 16
"""Loopback addresses the hosts are spread over (127.0.0.1 …)."""
ROBOTS: Final = b"User-agent: *\nDisallow: /private\n"
SERVER_SETTINGS: Final = ("max_connections=200", "shared_buffers=256MB")
"""The throwaway PostgreSQL server's settings beyond PostgreSQL's (durable) defaults."""
_MB: Final = 1024 * 1024
_MODULE: Final = (sys.executable, "-m", "benchmarks.broad")


def host_index(name: str) -> int:
    """The number of a generated host name (`h12.broad.test[:port]` → 12), -1 for others."""
    label = name.split(".", 1)[0]
    return int(label[1:]) if label[:1] == "h" and label[1:].isdigit() else -1


def address_of(name: str) -> str:
    """The loopback address a generated host name resolves to."""
    return f"127.0.0.{1 + max(0, host_index(name)) % ADDRESSES}"


class BroadResolver(AbstractResolver):
    """Resolves `*.broad.test` onto the loopback addresses, and nothing else."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not host.endswith("." + DOMAIN):
            raise OSError(f"{host}: not a benchmark host")
        return [
            {
                "hostname": host,
                "host": address_of(host),
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


# --- the site ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    hosts: int
    leaves: int
    port: int

    def page(self, host: bytes, path: bytes) -> bytes:
        """The whole HTTP response for one request."""
        name = host.decode("ascii", "replace")
        index = host_index(name)
        if index < 0 or index >= self.hosts:
            return _response(404, b"text/plain", b"no such host")
        if path == b"/robots.txt":
            return _response(200, b"text/plain", ROBOTS)
        if path != b"/":
            return _response(200, b"text/html; charset=utf-8", _html(name, ""))
        links = "".join(
            f'<a href="http://h{child}.{DOMAIN}:{self.port}/">host {child}</a>\n'
            for child in (2 * index + 1, 2 * index + 2)
            if child < self.hosts
        )
        links += "".join(f'<a href="/leaf/{n}">leaf {n}</a>\n' for n in range(self.leaves))
        links += '<a href="/private">private</a>\n' if self.leaves else ""
        return _response(200, b"text/html; charset=utf-8", _html(name, links))


def _html(name: str, links: str) -> bytes:
    text = "<p>Some text about this site, long enough to look like a page.</p>\n" * 20
    return f"<html><head><title>{name}</title></head><body>\n{text}{links}</body></html>".encode()


def _response(status: int, content_type: bytes, body: bytes) -> bytes:
    reason = b"OK" if status == 200 else b"Not Found"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        content_type,
        len(body),
        body,
    )


class _Connection(asyncio.Protocol):
    def __init__(self, site: Site) -> None:
        self._site = site
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            host = next((ln[5:].strip() for ln in lines[1:] if ln[:5].lower() == b"host:"), b"")
            assert self._transport is not None
            self._transport.write(self._site.page(host.split(b":")[0], path))


async def serve(hosts: int, leaves: int) -> None:
    """Listen on every loopback address at one free port, print the port, serve forever."""
    loop = asyncio.get_running_loop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = Site(hosts, leaves, port)
    servers = [
        await loop.create_server(
            lambda: _Connection(site), f"127.0.0.{n}", port, backlog=4096, reuse_address=True
        )
        for n in range(1, ADDRESSES + 1)
    ]
    print(port, flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


# --- the crawler ------------------------------------------------------------------------


def run_crawler(argv: list[str]) -> None:
    """`crawler crawl …` with the benchmark's resolver in front of the crawl's fetcher (the
    workers of --processes are forked from this process, so they have it too)."""
    from crawler.cli.main import cli
    from crawler.engine import crawl as crawl_module
    from crawler.fetch.client import Fetcher

    crawl_module.Fetcher = functools.partial(Fetcher, resolver=BroadResolver())  # type: ignore[attr-defined,misc]
    cli.main(args=["crawl", *argv], prog_name="crawler")


# --- measuring --------------------------------------------------------------------------


@dataclass
class Peaks:
    rss: dict[int, int] = field(default_factory=dict)
    """Per process: the highest VmHWM seen (bytes)."""
    fds: dict[int, int] = field(default_factory=dict)

    def sample(self, root: int) -> None:
        for pid in _tree(root):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                    self.rss[pid] = max(self.rss.get(pid, 0), hwm)
            self.fds[pid] = max(self.fds.get(pid, 0), fds)


def _tree(root: int) -> list[int]:
    """`root` and its descendants (from /proc/PID/task/*/children)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                todo.extend(int(child) for child in children)
        except OSError:
            continue
    return found


@dataclass(frozen=True)
class Result:
    hosts: int
    pages: int
    seconds: float
    peak_rss: int
    """The largest peak RSS of one crawler process (bytes)."""
    total_rss: int
    """The peak RSS of every crawler process, added up (the command's own with --processes,
    which forks the workers and waits for them: an upper bound, as peaks need not coincide)."""
    peak_fds: int
    processes: int


def measure(hosts: int, args: argparse.Namespace, database: Database) -> Result:
    """Serve a site of `hosts` hosts, crawl it, and return what was measured."""
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="broad-") as tmp:
        server = subprocess.Popen(
            [*_MODULE, "serve", f"--hosts={hosts}", f"--leaves={args.leaves}"],
            stdout=subprocess.PIPE,
            cwd=here,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            with database.target(Path(tmp)) as target:
                settings = [f"concurrency={args.concurrency}", f"obey_robots={args.robots}"]
                settings += ["progress_interval=3600", *args.set]
                command = [*_MODULE, "crawl", "--", *_crawl_args()]
                command += ["-o", target, f"--processes={args.processes}"]
                command += ["--fresh"] if database.url else []
                command += [arg for s in settings for arg in ("-s", s)]
                env = {**os.environ, "BROAD_START_URL": f"http://h0.{DOMAIN}:{port}/"}
                peaks = Peaks()
                with open(Path(tmp) / "crawl.log", "wb") as log:
                    started = time.monotonic()
                    crawler = subprocess.Popen(command, cwd=here, env=env, stdout=log, stderr=log)
                    while crawler.poll() is None:
                        peaks.sample(crawler.pid)
                        time.sleep(0.25)
                    seconds = time.monotonic() - started
                if crawler.returncode != 0:
                    tail = (Path(tmp) / "crawl.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"the crawl of {hosts} hosts failed:\n{tail}")
                pages = count_pages(target)
        finally:
            server.terminate()
            server.wait()
    return Result(
        hosts=hosts,
        pages=pages,
        seconds=seconds,
        peak_rss=max(peaks.rss.values(), default=0),
        total_rss=sum(peaks.rss.values()),
        peak_fds=max(peaks.fds.values(), default=0),
        processes=args.processes,
    )


def count_pages(target: str) -> int:
    """The pages a crawl stored, in a SQLite file or a PostgreSQL database."""
    if target.startswith(("postgresql://", "postgres://")):

        async def count() -> int:
            conn = await asyncpg.connect(target)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM pages"))
            finally:
                await conn.close()

        return asyncio.run(count())
    with closing(sqlite3.connect(target)) as conn:
        return int(conn.execute("SELECT count(*) FROM pages").fetchone()[0])


class Database:
    """Where the crawls go: `sqlite`, `postgresql` (a server of our own) or a
    `postgresql://` URL of a server to use as it is (crawled with `--fresh`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = kind if kind.startswith(("postgresql://", "postgres://")) else ""
        if not self.url and kind not in ("sqlite", "postgresql"):
            raise SystemExit(f"--database: sqlite, postgresql or a postgresql:// URL, not {kind}")
        self._server: PostgresServer | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """Start the throwaway server (`postgresql`) for the benchmark's duration."""
        if self.kind != "postgresql":
            yield
            return
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        self._server = PostgresServer(bin_dir, settings=SERVER_SETTINGS)
        self._server.start()
        try:
            yield
        finally:
            self._server.stop()
            self._server = None

    @contextmanager
    def target(self, tmp: Path) -> Iterator[str]:
        """The `-o` of one crawl: a new file, a new database, or the URL given."""
        if self._server is not None:
            url = self._server.create_database()
            try:
                yield url
            finally:
                self._server.drop_database(url)
        else:
            yield self.url or str(tmp / "broad.db")


def _crawl_args() -> list[str]:
    return ["benchmarks/broad_spider.py:BroadSpider", "--log-level=warning"]


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| hosts | pages | seconds | pages/s | peak RSS | RSS per 1,000 more hosts | open fds "
        "| all processes' RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = results[0]
    for r in results:
        if r is first:
            marginal = "-"
        else:
            per = (r.peak_rss - first.peak_rss) / ((r.hosts - first.hosts) / 1000)
            marginal = f"{per / 1024:.1f} KB"
        lines.append(
            f"| {r.hosts:,} | {r.pages:,} | {r.seconds:.0f} | {r.pages / r.seconds:,.0f} "
            f"| {r.peak_rss / _MB:.0f} MB | {marginal} | {r.peak_fds:,} "
            f"| {r.total_rss / _MB:.0f} MB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["crawl"]:
        rest = argv[1:]
        run_crawler(rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["run", "serve"], default="run")
    parser.add_argument("--hosts", default="10000,100000", help="comma-separated host counts")
    parser.add_argument("--leaves", type=int, default=2, help="pages per host besides its home")
    parser.add_argument("--robots", default="true", choices=["true", "false"])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("-s", "--set", action="append", default=[], help="more crawl settings")
    parser.add_argument(
        "--database", default="sqlite", help="sqlite, postgresql or a postgresql:// URL"
    )
    args = parser.parse_args(argv)
    counts = [int(n.replace("_", "")) for n in args.hosts.split(",")]
    if args.mode == "serve":
        asyncio.run(serve(counts[0], args.leaves))
        return
    database = Database(args.database)
    results: list[Result] = []
    with database.running():
        for count in counts:
            results.append(measure(count, args, database))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    shape = f"{args.leaves} leaves per host, robots.txt {'on' if args.robots == 'true' else 'off'}"
    where = "PostgreSQL" if database.kind != "sqlite" else "SQLite"
    print(f"\n{shape}, concurrency {args.concurrency}, {args.processes} process(es), {where}\n")
    print(table(results))


if __name__ == "__main__":
    main()
