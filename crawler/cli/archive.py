"""`crawler export DB -f warc`: the stored pages of a crawl database as a WARC/1.1 file
(crawler.results.warc), written to `FILE.part` and renamed, so that an interrupted export
leaves no half file; gzip-compressed per record unless the file name ends in `.warc`.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from crawler.cli.common import UserError
from crawler.cli.readonly import open_crawl_database, read_error
from crawler.results.warc import write_warc
from crawler.store.archive import has_stored_bodies
from crawler.store.pg_url import with_pg_errors
from crawler.store.schema import storage_error

if TYPE_CHECKING:
    from crawler.store.pg_read import ReadConnection

__all__ = ["export_warc"]


def export_warc(database: Path | str, output: str) -> None:
    """Write the pages of `database` whose bodies were stored to `output` (- is stdout)."""
    conn = open_crawl_database(database, interruptible=True)  # `export` stops on signals
    try:
        try:
            if not has_stored_bodies(conn):
                raise UserError(
                    f"{database} holds no page bodies to archive; crawl with -s store_body=true"
                )
            if output == "-":
                count = write_warc(conn, sys.stdout.buffer, gzip=True, filename="")
            else:
                count = _to_file(conn, Path(output))
        except with_pg_errors(sqlite3.Error) as exc:
            raise read_error(database, exc, "cannot export pages as WARC") from None
    finally:
        conn.close()
    click.echo(f"exported {count:,} pages as WARC records to {output}", err=True)


def _to_file(conn: ReadConnection, path: Path) -> int:
    partial = path.with_name(path.name + ".part")
    compress = not path.name.lower().endswith(".warc")
    try:
        with partial.open("wb") as out:
            count = write_warc(conn, out, gzip=compress, filename=path.name)
        partial.replace(path)
    except OSError as exc:
        raise storage_error(path, exc, "write") from None
    finally:
        partial.unlink(missing_ok=True)
    return count
