"""The `crawler` command line: crawl, list, query, settings and demo.

Argument parsing and exit codes live here, nothing else: bad input (unknown spider, bad
setting or URL, unreadable config, missing database, a file that is not a crawl database,
bad SQL) is one line on stderr and exit code 2; a failing storage (disk full, read-only file
or filesystem, I/O error), at start-up as mid-crawl, one line and exit code 1; Ctrl-C stops
a crawl cleanly (exit 130), a second Ctrl-C at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.table import Table

from crawler.cli.bench import bench
from crawler.cli.common import (
    DATABASE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    check_start_url,
    check_starts_somewhere,
    failed_start,
    load_crawl_settings,
    parse_assignments,
    run_with_signals,
    setup_logging,
    user_errors,
    with_start_urls,
)
from crawler.cli.dashboard import dashboard, dashboard_beside, dashboard_options
from crawler.cli.readonly import open_read_only, read_crawl_database
from crawler.cli.results import export, parse, query, reparse, stats
from crawler.cli.settings_view import settings_table, show_settings
from crawler.cli.spiders import new, record, serve_demo
from crawler.engine.crawl import Crawl
from crawler.engine.processes import run_processes
from crawler.engine.recrawl import requeue
from crawler.engine.summary import combined_summary, last_run_id
from crawler.results.formats import write_rows
from crawler.results.status import crawl_status
from crawler.settings import Settings
from crawler.spider.base import Spider
from crawler.spider.discovery import find_spider, spider_catalogue, spider_reference
from crawler.stats import render_summary
from crawler.store.backends import open_store
from crawler.store.schema import open_database
from crawler.version import __version__

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crawler")
def cli() -> None:
    """An async web crawler that writes everything it finds to a SQLite file."""


@cli.command()
@click.argument("spider")
@click.option(
    "-o",
    "--output",
    type=DATABASE,
    help="Database file, or a PostgreSQL URL postgresql://USER@HOST:PORT/DB shared by workers "
    "on many machines [setting database, else <spider>.db].",
)
@click.option(
    "-s",
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting (repeatable).",
)
@click.option("--max-pages", type=int, help="Stop admitting requests after N (setting max_pages).")
@click.option("--concurrency", type=int, help="Requests in flight (setting concurrency).")
@click.option(
    "--start-url",
    "start_urls",
    multiple=True,
    metavar="URL",
    help="Start here instead (repeatable); its host becomes an allowed domain.",
)
@click.option("--config", type=click.Path(path_type=Path), help="Config file [./config.toml].")
@click.option("--fresh", is_flag=True, help="Empty the database first instead of resuming.")
@click.option(
    "--recrawl",
    is_flag=True,
    help="Fetch again (conditionally) every page fetched before; changed ones are parsed.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Print the settings this crawl would use and where each comes from; do not crawl.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Crawler processes sharing the database (to use more than one core).",
)
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@dashboard_options
def crawl(
    spider: str,
    output: Path | str | None,
    assignments: tuple[str, ...],
    max_pages: int | None,
    concurrency: int | None,
    start_urls: tuple[str, ...],
    config: Path | None,
    fresh: bool,
    recrawl: bool,
    explain: bool,
    processes: int,
    log_level: str,
    with_dashboard: bool,
    dashboard_port: int,
) -> None:
    """Crawl with SPIDER (a name, module:Class or file.py) into a SQLite file.

    Running again into the same file resumes the crawl where it stopped.
    """
    console = Console(stderr=True)
    setup_logging(log_level, console)
    with user_errors():
        spider_class = find_spider(spider)
        if start_urls:
            spider_class = with_start_urls(spider_class, [check_start_url(u) for u in start_urls])
        overrides: dict[str, object] = dict(parse_assignments(assignments))
        if max_pages is not None:
            overrides["max_pages"] = str(max_pages)
        if concurrency is not None:
            overrides["concurrency"] = str(concurrency)
        loaded = load_crawl_settings(spider_class, config, overrides)
        if explain:
            Console().print(settings_table(loaded))
            return
        check_starts_somewhere(spider_class)
        db = output or DATABASE.convert(
            loaded.settings.database or f"{spider_class.name}.db", None, None
        )
        during = dashboard_beside(db, dashboard_port, processes) if with_dashboard else None
        if processes > 1:
            _crawl_in_processes(processes, db, fresh, spider_class, loaded.settings, recrawl)
            return
        after = 0 if fresh else last_run_id(db)
        settings = loaded.settings
        run = Crawl(
            spider_class(), db=db, settings=settings, fresh=fresh, console=console, recrawl=recrawl
        )
        summary = run_with_signals(run, during)
        failure = failed_start(db, after, summary["pages"]) if run.status == "finished" else None
    Console().print(render_summary(run.spider.name, "failed" if failure else run.status, summary))
    click.echo(f"results: {db}", err=True)
    if failure:
        click.echo(f"error: {failure}", err=True)
        sys.exit(EXIT_FAILURE)
    if run.status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


def _crawl_in_processes(
    count: int,
    db: Path | str,
    fresh: bool,
    spider_class: type[Spider],
    settings: Settings,
    recrawl: bool,
) -> None:
    """Run this crawl in `count` processes over one database file, and print one summary."""
    if fresh and isinstance(db, Path):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    # Before the processes, which would race to create it (PostgreSQL: and to empty it)
    asyncio.run(_create_database(db, fresh=fresh))
    after = last_run_id(db)
    # --recrawl re-queues once, here: a worker starting later would take the pages another
    # one has just fetched for due again.
    requeued = asyncio.run(_requeue(db, settings)) if recrawl else 0

    def crawl_one() -> int:
        # Progress as log lines: several live displays on one terminal would overwrite
        # each other.
        quiet = Console(stderr=True, force_terminal=False)
        run = Crawl(spider_class(), db=db, settings=settings, console=quiet)
        run_with_signals(run)
        return EXIT_INTERRUPTED if run.status == "interrupted" else 0

    code = run_processes(count, crawl_one, db=db, shutdown_grace=settings.shutdown_grace)
    if isinstance(db, Path) and not db.exists():
        sys.exit(code or 1)
    status, summary = combined_summary(db, after)
    summary["requeued"] = summary.get("requeued", 0) + requeued
    failure = failed_start(db, after, summary["pages"]) if status == "finished" else None
    Console().print(render_summary(f"{count} processes", "failed" if failure else status, summary))
    click.echo(f"results: {db}", err=True)
    if failure:
        click.echo(f"error: {failure}", err=True)
    sys.exit(EXIT_FAILURE if failure else code)


async def _create_database(db: Path | str, *, fresh: bool) -> None:
    """Create (or migrate) the database, empty it when `fresh` (PostgreSQL: a file is
    deleted instead), then close it."""
    if isinstance(db, Path):
        await (await open_database(db)).close()
        return
    from crawler.store.pg_runs import empty_pg_database  # loads asyncpg (crawler.store.pg_url)
    from crawler.store.pg_schema import open_pg

    conn = await open_pg(db)
    try:
        if fresh:
            await empty_pg_database(conn)
    finally:
        await conn.close()


async def _requeue(db: Path | str, settings: Settings) -> int:
    """Re-queue every page fetched before (`--recrawl`), then close the database."""
    store = await open_store(db)
    try:
        return await requeue(store, settings, recrawl=True)
    finally:
        await store.close()


@cli.command(name="list")
def list_spiders() -> None:
    """List the available spiders and their start URLs."""
    with user_errors():
        catalogue = spider_catalogue()
    table = Table("name", "class", "start URLs")
    for name, cls in catalogue.spiders.items():
        table.add_row(name, spider_reference(cls), "\n".join(cls.start_urls) or "-")
    for broken in catalogue.broken:  # listed, so that a typo does not hide a spider silently
        table.add_row("[red]cannot import[/]", str(broken), "-")
    Console().print(table)


@cli.command()
@click.argument("database", type=DATABASE)
@click.option("-f", "--format", "fmt", default="table", type=click.Choice(["table", "json"]))
def status(database: Path | str, fmt: str) -> None:
    """Show the state of a crawl DATABASE: pending, done, failed, last activity.

    Safe to run while the crawl is running.
    """
    with user_errors():
        state = read_crawl_database(database, crawl_status)
    if fmt == "json":
        click.echo(json.dumps(state, indent=2))
        return
    table = Table("", "", show_header=False)
    run = state["latest_run"] or {}
    table.add_row("spider", str(state["spider"]))
    table.add_row(
        "latest run", f"#{run.get('id')} {run.get('status')} since {run.get('started_at')}"
    )
    for name, count in state["requests"].items():
        table.add_row(name, f"{count:,}")
    table.add_row("in flight", f"{state['in_flight']:,}")
    table.add_row("waiting to retry", f"{state['waiting_for_retry']:,}")
    table.add_row(
        "pages / items / errors", f"{state['pages']:,} / {state['items']:,} / {state['errors']:,}"
    )
    table.add_row("last page fetched", str(state["last_page_at"]))
    Console().print(table)


DEMO_QUERY: Final = """
SELECT category, count(*) AS books, round(avg(price), 2) AS avg_price, max(rating) AS best_rating
FROM book
GROUP BY category ORDER BY books DESC, category LIMIT 10
"""


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("demo.db"),
    show_default=True,
    help="Database file (started fresh).",
)
@click.option("--books", default=300, show_default=True, help="Books in the demo catalogue.")
@click.option(
    "--days",
    default=1,
    show_default=True,
    type=click.IntRange(1, 365),
    help="Crawl it on N days in a row: day 1 on, 5% of its pages change and it is re-crawled.",
)
def demo(output: Path, books: int, days: int) -> None:
    """Serve the bundled sample catalogue on 127.0.0.1 and crawl it with the books spider."""
    from crawler.demo import catalogue_app  # the demo site is only loaded when asked for
    from crawler.demo.serve import listening_socket, serve_app

    console = Console(stderr=True)
    setup_logging("WARNING", console)
    out = Console()
    with user_errors():
        sock = listening_socket()
        host, port = sock.getsockname()[:2]
        spider_class = with_start_urls(find_spider("books"), [f"http://{host}:{port}/"])
        # The demo site is ours, on loopback: no need for autothrottle's caution.
        loaded = load_crawl_settings(spider_class, None, {"autothrottle": "false"})
        for day in range(days):
            if day:  # the same address every day: the crawl's URLs name it
                sock = listening_socket(port=port)
            run = Crawl(
                spider_class(),
                db=output,
                settings=loaded.settings,
                fresh=day == 0,
                console=console,
                recrawl=day > 0,
            )
            site = catalogue_app(book_count=books, day=day)
            summary = run_with_signals(run, serve_app(site, sock))
            if days > 1:
                click.echo(_day_line(day, summary))
            if run.status == "interrupted":
                break
    out.print(render_summary(run.spider.name, run.status, summary))
    out.print(f'\nExample query (crawler query {output} "..."):\n{DEMO_QUERY.strip()}\n')
    with user_errors():
        conn = open_read_only(output)
    try:
        cursor = conn.execute(DEMO_QUERY)
        assert cursor.description is not None  # a SELECT
        columns = [d[0] for d in cursor.description]
        write_rows(columns, cursor, fmt="table", out=sys.stdout, console=out)
    finally:
        conn.close()
    if run.status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


def _day_line(day: int, summary: dict[str, Any]) -> str:
    """One line of `crawler demo --days`: what the day's run fetched and parsed."""
    again: dict[str, int] = summary.get("refetched", {})
    return (
        f"day {day}: {summary['pages']:,} pages fetched "
        f"({sum(again.values()):,} re-fetched conditionally: {again.get('unchanged', 0):,} "
        f"unchanged, {again.get('changed', 0):,} changed), {summary['items']:,} items stored"
    )


def main() -> None:
    """Entry point of the `crawler` console script."""
    cli(prog_name="crawler")


cli.add_command(bench)
cli.add_command(dashboard)
cli.add_command(new)
cli.add_command(record)
cli.add_command(serve_demo)
cli.add_command(query)
cli.add_command(export)
cli.add_command(stats)
cli.add_command(reparse)
cli.add_command(parse)
cli.add_command(show_settings)
