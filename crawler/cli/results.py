"""Commands for working with results: query, export, stats, reparse and parse.

Each opens the crawl database read-only unless it must write (`query --write`, `reparse`):
then no statement may write any file (crawler.cli.readonly.ReadOnlyGuard). Bad input — a
missing file, a file that is not a crawl database, bad SQL, a statement that would write, an
unknown item type — is one line on stderr and exit code 2; a failing storage (an I/O error,
a full disk under `export -o`) is one line and exit code 1; Ctrl-C or SIGTERM is one line
and exit code 130, whatever was running (crawler.cli.common `stopped_by_signals`,
`run_until_stopped`).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import click
from rich.console import Console
from rich.table import Table

from crawler.cli.common import (
    DATABASE,
    UserError,
    check_start_url,
    load_crawl_settings,
    parse_assignments,
    run_until_stopped,
    setup_logging,
    stopped_by_signals,
    user_errors,
)
from crawler.cli.readonly import (
    ReadOnlyGuard,
    open_crawl_database,
    open_read_only,
    query_error,
    read_crawl_database,
    read_error,
)
from crawler.engine.parse_page import ParsedPage, parse_page
from crawler.results.export import item_rows, known_item_types
from crawler.results.formats import OutputFormat, write_rows
from crawler.results.report import crawl_report, render_report
from crawler.spider.discovery import find_spider
from crawler.store.pg_url import with_pg_errors
from crawler.store.schema import storage_error

if TYPE_CHECKING:
    from crawler.engine.reparse import ReparseSummary

__all__ = ["export", "parse", "query", "reparse", "stats"]

ExportFormat = Literal["jsonl", "json", "csv", "warc"]
_SUFFIX_FORMATS: Final[dict[str, ExportFormat]] = {".csv": "csv", ".json": "json"}


@contextmanager
def _stdout_pipe() -> Iterator[None]:
    """Stop quietly when stdout is closed early (`crawler query … | head`)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        sys.exit(1)


def _bound_params(params: tuple[str, ...]) -> dict[str, str]:
    bound: dict[str, str] = {}
    for param in params:
        name, sep, value = param.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--param expects NAME=VALUE, got {param!r}")
        bound[name.strip().lstrip(":")] = value
    return bound


@click.command()
@click.argument("database", type=DATABASE)
@click.argument("sql")
@click.option(
    "-f",
    "--format",
    "fmt",
    default=None,
    type=click.Choice(["table", "json", "jsonl", "csv"]),
    help="Output format [table on a terminal, else csv].",
)
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Bind :NAME in the SQL to VALUE, a string (repeatable).",
)
@click.option("--write", is_flag=True, help="Open the database for writing (default: read-only).")
def query(
    database: Path | str, sql: str, fmt: OutputFormat | None, params: tuple[str, ...], write: bool
) -> None:
    """Run SQL against a crawl DATABASE and print the rows.

    The file is opened read-only unless --write is given: then a statement that would write
    any file (INSERT, CREATE, ATTACH, VACUUM, a pragma's new value…) is refused. Ctrl-C or
    SIGTERM stops it (exit code 130); an interrupted statement changes nothing.
    """
    with stopped_by_signals("query interrupted"), user_errors(), _stdout_pipe():
        bound = _bound_params(params)
        guard = None if write else ReadOnlyGuard()
        conn = open_read_only(database, write=write, guard=guard, interruptible=True)
        try:
            try:
                cursor = conn.execute(sql, bound)
            except with_pg_errors(sqlite3.Error, sqlite3.Warning) as exc:
                raise query_error(exc, database, guard) from None
            if cursor.description is None:  # no result columns: a write or a pragma
                click.echo(f"{max(cursor.rowcount, 0):,} rows changed", err=True)
                return
            columns = [d[0] for d in cursor.description]
            out = Console()
            chosen: OutputFormat = fmt or ("table" if out.is_terminal else "csv")
            try:
                write_rows(columns, cursor, fmt=chosen, out=sys.stdout, console=out)
            except with_pg_errors(sqlite3.Error) as exc:
                raise query_error(exc, database, guard) from None
        finally:
            conn.close()


@click.command()
@click.argument("database", type=DATABASE)
@click.option("-t", "--type", "type_name", help="Item type: book, quote, … (not with warc).")
@click.option(
    "-f",
    "--format",
    "fmt",
    default=None,
    type=click.Choice(["jsonl", "json", "csv", "warc"]),
    help="Output format [from the -o suffix: .csv, .json, .warc, .warc.gz, else jsonl].",
)
@click.option("-o", "--output", default="-", show_default=True, help="File to write; - is stdout.")
def export(
    database: Path | str, type_name: str | None, fmt: ExportFormat | None, output: str
) -> None:
    """Export the items of one type (-t) from a crawl DATABASE, streaming; or, with
    -f warc, its stored pages as WARC/1.1 request and response records.

    Dataclass items are the rows of their typed table, dict items those of `items`. In JSON
    and JSON lines each value is as the spider yielded it (true stays true, 2.0 stays 2.0);
    CSV writes bools as true/false, lists and dicts as JSON, None as an empty cell. Ctrl-C or
    SIGTERM stops it (exit code 130); a file given with -o is then not written at all.
    """
    interrupted = (
        "export interrupted: the rows written to stdout stop short"
        if output == "-"
        else f"export interrupted: {output} was not written"
    )
    with stopped_by_signals(interrupted), user_errors(), _stdout_pipe():
        chosen: ExportFormat = fmt or _SUFFIX_FORMATS.get(Path(output).suffix.lower(), "jsonl")
        if fmt is None and output.lower().endswith((".warc", ".warc.gz")):
            chosen = "warc"
        if chosen == "warc":
            if type_name is not None:
                raise UserError("-f warc exports the stored pages, not items: leave out -t")
            from crawler.cli.archive import export_warc  # (imported when used, as reparse's)

            export_warc(database, output)
            return
        if type_name is None:
            raise UserError("export needs -t TYPE (an item type), or -f warc for the pages")
        conn = open_crawl_database(database, interruptible=True)
        try:
            try:
                rows = item_rows(conn, type_name, decode_json=chosen != "csv")
                if rows is None:
                    known = ", ".join(known_item_types(conn)) or "none"
                    raise UserError(f"unknown item type {type_name!r} (known types: {known})")
                if output == "-":
                    write_rows(rows.columns, rows.rows, fmt=chosen, out=sys.stdout)
                    return
                count = _export_to_file(Path(output), rows.columns, rows.rows, chosen)
            except with_pg_errors(sqlite3.Error) as exc:
                raise read_error(database, exc, f"cannot export {type_name!r}") from None
        finally:
            conn.close()
    click.echo(f"exported {count:,} {type_name} rows to {output}", err=True)


def _export_to_file(
    path: Path, columns: list[str], rows: Iterator[object], fmt: ExportFormat
) -> int:
    """Write to `path`.part, then rename: an interrupted export leaves no half file."""
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            count = write_rows(columns, rows, fmt=fmt, out=out)  # type: ignore[arg-type]
        partial.replace(path)
    except OSError as exc:
        raise storage_error(path, exc, "write") from None
    finally:
        partial.unlink(missing_ok=True)
    return count


@click.command()
@click.argument("database", type=DATABASE)
@click.option(
    "-f", "--format", "fmt", default="table", type=click.Choice(["table", "json"]), help="[table]"
)
def stats(database: Path | str, fmt: str) -> None:
    """Summarise a crawl DATABASE: pages by status, hosts, depth, errors, items, speed.

    Everything is counted from the tables, so it works on any file, even one being written.
    """
    with user_errors():
        report = read_crawl_database(database, crawl_report)
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        Console().print(render_report(report, title=f"crawl database {database}"))


@click.command()
@click.argument("spider")
@click.argument("database", type=DATABASE)
@click.option(
    "-s", "--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override a setting."
)
@click.option("--config", type=click.Path(path_type=Path), help="Config file [./config.toml].")
@click.option(
    "-f", "--format", "fmt", default="table", type=click.Choice(["table", "json"]), help="[table]"
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Parse in this many worker processes [the number of cores; 1: in this process].",
)
def reparse(
    spider: str,
    database: Path | str,
    assignments: tuple[str, ...],
    config: Path | None,
    fmt: str,
    processes: int | None,
) -> None:
    """Re-run SPIDER's callbacks over the page bodies stored in DATABASE, with no network.

    Replaces the items (and typed tables) those pages produced: fix a selector, then reparse
    instead of crawling again. Needs a crawl made with -s store_body=true. Exit codes: 0
    done (or stopped by the spider, nothing changed), 1 a worker process died or the storage
    failed, 2 bad input, 130 interrupted by Ctrl-C or SIGTERM (nothing changed; a second
    Ctrl-C stops the worker processes at once instead of letting them finish their chunk).
    """
    # Imported when used: each command (a crawl too) loads this module; start-up time.
    from crawler.engine.pg_reparse import reparse_postgres
    from crawler.engine.reparse import reparse as reparse_database
    from crawler.engine.reparse_workers import ReparseWorkerDied

    console = Console(stderr=True)
    setup_logging("WARNING", console)
    with user_errors():
        spider_class = find_spider(spider)
        loaded = load_crawl_settings(spider_class, config, dict(parse_assignments(assignments)))
        open_crawl_database(database).close()  # refuse other files before opening for writing
        count = processes or available_cores()
        source = functools.partial(find_spider, spider, Path.cwd())
        work = (
            reparse_postgres(spider_class(), database, loaded.settings)
            if isinstance(database, str)  # parsed in this process
            else reparse_database(
                spider_class(),
                database,
                loaded.settings,
                processes=count,
                spider_source=source,
                console=console,
            )
        )
        try:
            summary = run_until_stopped(
                work, "reparse interrupted: nothing was changed; run it again"
            )
        except ReparseWorkerDied as exc:
            click.echo(f"error: {exc}; nothing was changed", err=True)
            sys.exit(1)
    if fmt == "json":
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        Console().print(_summary_table(summary, database))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _summary_table(summary: ReparseSummary, database: Path | str) -> Table:
    data = summary.as_dict()
    table = Table(title=f"reparse of {database}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in data.items():
        shown = (
            ", ".join(f"{k}: {v:,}" for k, v in value.items()) or "-"
            if isinstance(value, dict)
            else "-"
            if value is None
            else f"{value:,}"
            if isinstance(value, int)
            else str(value)
        )
        table.add_row(name.replace("_", " "), shown)
    return table


@click.command()
@click.argument("spider")
@click.argument("url")
@click.option("-c", "--callback", help="Spider method to run [the stored one, else parse].")
@click.option(
    "--from",
    "database",
    type=DATABASE,
    help="Read the page from this crawl database instead of fetching it.",
)
@click.option(
    "-s", "--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Override a setting."
)
@click.option("--config", type=click.Path(path_type=Path), help="Config file [./config.toml].")
@click.option(
    "-f", "--format", "fmt", default="text", type=click.Choice(["text", "json"]), help="[text]"
)
def parse(
    spider: str,
    url: str,
    callback: str | None,
    database: Path | str | None,
    assignments: tuple[str, ...],
    config: Path | None,
    fmt: str,
) -> None:
    """Show what SPIDER's callback yields for the page at URL: items and requests.

    Fetches URL (or reads it from a crawl database with --from) and prints the items as JSON
    and the requests with their callback and depth. Nothing is stored. Exit code 1 when the
    callback raised or the page would not be parsed, 130 when Ctrl-C or SIGTERM stopped it.
    """
    setup_logging("WARNING", Console(stderr=True))
    with user_errors():
        spider_class = find_spider(spider)
        if database is None:
            check_start_url(url)
        else:
            open_crawl_database(database).close()
        loaded = load_crawl_settings(spider_class, config, dict(parse_assignments(assignments)))
        work = parse_page(
            spider_class(), url, settings=loaded.settings, callback=callback, database=database
        )
        page = run_until_stopped(work, "parse interrupted")
    if fmt == "json":
        click.echo(json.dumps(page.as_dict(), indent=2, ensure_ascii=False))
    else:
        _print_page(page)
    if not page.parsed or page.errors:
        sys.exit(1)


def _print_page(page: ParsedPage) -> None:
    click.echo(f"{page.status} {page.content_type} {page.url} (callback {page.callback})")
    if not page.parsed:
        click.echo(
            "not parsed: a crawl parses responses with status < 300 and a content type "
            "listed in parse_content_types",
            err=True,
        )
        return
    click.echo(f"\nitems ({len(page.items)}):")
    for type_name, data in page.items:
        click.echo(f"{type_name} {data}")
    click.echo(
        f"\nrequests ({len(page.requests)} to crawl, {len(page.skipped)} skipped, "
        f"{page.duplicates} duplicates):"
    )
    for c in page.requests:
        click.echo(f"{c.request.callback:<16} depth {c.request.depth:<3} {c.url}")
    for s in page.skipped:
        click.echo(f"{'skip: ' + s.reason.value:<16} depth {s.depth:<3} {s.url}")
    for problem in [*page.invalid_items, *page.dropped]:
        click.echo(f"item not stored: {problem}")
    for error in page.errors:
        click.echo(f"error ({error.kind}): {error.message}", err=True)
