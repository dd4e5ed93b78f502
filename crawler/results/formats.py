"""Rendering query results: a table on a terminal, or streamed JSON, JSON lines or CSV.

Rows arrive as an iterator and are written as they come, so exporting a million rows holds
one row at a time (the table format, which must measure its columns, keeps them all).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Literal, TextIO

from rich.console import Console
from rich.table import Table

__all__ = ["OutputFormat", "write_rows"]

OutputFormat = Literal["table", "json", "jsonl", "csv"]


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def write_rows(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    fmt: OutputFormat,
    out: TextIO,
    console: Console | None = None,
) -> int:
    """Write rows in the chosen format and return how many were written."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _jsonable(v) for v in row])
            count += 1
    elif fmt == "jsonl":
        for row in rows:
            record = {c: _jsonable(v) for c, v in zip(columns, row, strict=True)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    elif fmt == "json":
        out.write("[")
        for row in rows:
            record = {c: _jsonable(v) for c, v in zip(columns, row, strict=True)}
            out.write(("," if count else "") + "\n  " + json.dumps(record, ensure_ascii=False))
            count += 1
        out.write("\n]\n" if count else "]\n")
    else:
        table = Table(*columns, show_lines=False)
        for row in rows:
            table.add_row(*("" if v is None else str(_jsonable(v)) for v in row))
            count += 1
        (console or Console(file=out)).print(table)
    return count
