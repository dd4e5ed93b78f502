"""PostgreSQL beside SQLite: pages/s with 1, 2 and 4 crawler processes, and what the server costs.

``python -m benchmarks.postgres --pages 3000 --rounds 3`` generates the benchmark site, serves it
with nginx (server.py), starts a PostgreSQL server of its own on 127.0.0.1 (tests/pgserver.py,
with PostgreSQL's durable defaults: fsync and synchronous_commit on) and crawls the site with
our crawler (compare.py's ``ours`` command, ``--processes N``) into a SQLite file and into a
fresh PostgreSQL database, alternating, N from ``--processes`` (1,2,4). Each run reports
pages/s, the cores the crawler processes used, the cores the PostgreSQL server used (its
postmaster and backends, exited ones included: /proc's cutime of the postmaster), and, on
PostgreSQL, what one page costs the server: rows inserted + updated + deleted
(pg_stat_user_tables), WAL bytes (pg_current_wal_lsn) and bytes the tables and indexes grew
(pg_database_size). The table shows each figure's median over rounds.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks.measure import local_only_env, machine_busy_seconds, run_measured
from benchmarks.server import StaticServer
from benchmarks.site import generate_site
from benchmarks.tools import OURS_SETTINGS, Ours, RunContext
from tests.pgserver import PostgresServer, find_bin_dir

_TICKS: Final = os.sysconf("SC_CLK_TCK")
DURABLE: Final = (
    "max_connections=200",
    "shared_buffers=256MB",
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=all",  # the statements run inside the triggers too
)
"""The benchmark server's settings beyond PostgreSQL's defaults (which keep fsync, full page
writes and synchronous_commit on, as a production server would), and pg_stat_statements, to
split the server's time between claiming and writing."""


@dataclass(frozen=True, slots=True)
class Run:
    """One crawl's figures."""

    backend: str
    processes: int
    pages: int
    wall: float
    crawler_cores: float
    server_cores: float
    machine_cores: float
    rows_per_page: float = 0.0
    wal_bytes_per_page: float = 0.0
    stored_bytes_per_page: float = 0.0
    claim_ms_per_page: float = 0.0
    """Server time (pg_stat_statements' total_exec_time) in the claim statements, per page."""
    other_ms_per_page: float = 0.0
    """Server time in every other statement (the writer's batches, runs, heartbeats)."""

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.wall


def server_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live children and the children it reaped."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if stat.parent.name == str(postmaster):
            total += sum(int(f) for f in fields[11:15]) / _TICKS  # utime stime cutime cstime
        elif fields[1] == str(postmaster):
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def database_figures(server: PostgresServer, url: str) -> tuple[int, int, int]:
    """Rows written so far (inserted + updated + deleted), the WAL position, the size."""
    name = url.rsplit("/", 1)[1]
    out = server.psql(
        "SELECT (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
        f"FROM pg_stat_user_tables), pg_current_wal_lsn() - '0/0', pg_database_size('{name}')",
        database=name,
    )
    rows, wal, size = out.strip().split("|")
    return int(rows), int(float(wal)), int(size)


CLAIM_STATEMENTS: Final = (
    "%SET lease_owner = $%",  # the claim (crawler.store.pg_claims)
    "%SKIP LOCKED%",  # its hosts, ready and locked
    "%next_host%",  # the hosts with pending requests
    "%lease_owner != $%",  # what is left when nothing was claimed
    "%SET lease_expires = $%",  # renewing the leases
)
"""LIKE patterns of the statements that claim, in pg_stat_statements' normalized text."""


def statement_times(server: PostgresServer, name: str) -> tuple[float, float]:
    """Milliseconds the server spent executing claim statements and the others, in the
    database `name`, since its statistics were reset (top-level statements only, so the
    triggers' time counts in the statement that fired them)."""
    out = server.psql(
        "SELECT coalesce(sum(total_exec_time) FILTER (WHERE query LIKE ANY (ARRAY["
        + ", ".join(f"'{pattern}'" for pattern in CLAIM_STATEMENTS)
        + "])), 0), "
        "coalesce(sum(total_exec_time), 0) FROM pg_stat_statements WHERE toplevel "
        "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        database=name,
    )
    claims, total = (float(v) for v in out.strip().split("|"))
    return claims, total - claims


def crawl_once(
    backend: str, processes: int, ctx: RunContext, server: PostgresServer, timeout: float
) -> Run:
    """Crawl the site once into a fresh SQLite file or PostgreSQL database."""
    command, cwd = Ours(OURS_SETTINGS, processes=processes).command(ctx)
    url = server.create_database() if backend == "postgresql" else ""
    target = url or str(ctx.run_dir / f"ours-{processes}.db")
    command[command.index("-o") + 1] = target
    name = url.rsplit("/", 1)[1] if url else ""
    if url:
        server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=name)
        server.psql("SELECT pg_stat_statements_reset()", database=name)
    before = database_figures(server, url) if url else (0, 0, 0)
    server_before, busy_before = server_cpu_seconds(postmaster_pid(server)), machine_busy_seconds()
    log = ctx.run_dir / f"{backend}-{processes}.log"
    measured = run_measured(command, cwd=cwd, log=log, timeout=timeout, env=local_only_env())
    if measured.returncode != 0:
        raise SystemExit(f"{backend} x{processes} failed: {log.read_text()[-2000:]}")
    server_used = server_cpu_seconds(postmaster_pid(server)) - server_before
    busy = machine_busy_seconds() - busy_before
    count = "SELECT count(*) FROM pages"
    claim_ms = other_ms = 0.0
    if url:
        pages = int(server.psql(count, database=name).strip())
        after = database_figures(server, url)
        claim_ms, other_ms = statement_times(server, name)
        server.drop_database(url)
    else:
        with sqlite3.connect(target) as conn:
            pages = int(conn.execute(count).fetchone()[0])
        os.unlink(target)
        after = before
    wall = measured.wall_seconds
    rows, wal, size = (a - b for a, b in zip(after, before, strict=True))
    return Run(
        backend,
        processes,
        pages,
        wall,
        crawler_cores=measured.cpu_seconds / wall,
        server_cores=server_used / wall,
        machine_cores=busy / wall,
        rows_per_page=rows / pages,
        wal_bytes_per_page=wal / pages,
        stored_bytes_per_page=size / pages,
        claim_ms_per_page=claim_ms / pages,
        other_ms_per_page=other_ms / pages,
    )


def report(runs: list[Run]) -> str:
    """A markdown table of the medians per backend and process count."""
    lines = [
        "| backend | processes | pages/s | crawler cores | PostgreSQL cores | machine cores "
        "| PostgreSQL CPU ms/page | rows/page | WAL bytes/page | stored bytes/page "
        "| claim ms/page | write ms/page |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.processes, r.backend) for r in runs})
    for processes, backend in keys:
        group = [r for r in runs if (r.processes, r.backend) == (processes, backend)]

        def median(field: str, group: list[Run] = group) -> float:
            return statistics.median(getattr(r, field) for r in group)

        writes = (
            f"{1000 * median('server_cores') / median('pages_per_second'):.2f} "
            f"| {median('rows_per_page'):.1f} | {median('wal_bytes_per_page'):,.0f} "
            f"| {median('stored_bytes_per_page'):,.0f} | {median('claim_ms_per_page'):.3f} "
            f"| {median('other_ms_per_page'):.3f}"
            if backend == "postgresql"
            else "- | - | - | - | - | -"
        )
        lines.append(
            f"| {backend} | {processes} | {median('pages_per_second'):,.0f} "
            f"| {median('crawler_cores'):.2f} | {median('server_cores'):.2f} "
            f"| {median('machine_cores'):.2f} | {writes} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line: generate, serve, start PostgreSQL, crawl alternately, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    counts = [int(n) for n in args.processes.split(",")]
    Ours().prepare()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp_name:
        tmp = Path(tmp_name)
        generate_site(tmp / "site", args.pages)
        server = PostgresServer(bin_dir, settings=DURABLE)
        server.start()
        try:
            with StaticServer(tmp / "site") as site:
                ctx = RunContext(
                    base_url=site.base_url,
                    site=tmp / "site",
                    run_dir=tmp,
                    concurrency=args.concurrency,
                )
                for round_number in range(args.rounds):
                    for processes in counts:
                        for backend in ("sqlite", "postgresql"):
                            run = crawl_once(backend, processes, ctx, server, args.timeout)
                            runs.append(run)
                            print(
                                f"round {round_number + 1} {backend:10s} x{processes}: "
                                f"{run.pages} pages {run.pages_per_second:,.0f}/s, crawler "
                                f"{run.crawler_cores:.2f} cores, PostgreSQL "
                                f"{run.server_cores:.2f}, machine {run.machine_cores:.2f}",
                                flush=True,
                            )
        finally:
            server.stop()
    print()
    print(report(runs))


if __name__ == "__main__":
    main()
