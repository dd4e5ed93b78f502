"""The README stays true: every setting with its default and meaning, and every command."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

from crawler import Settings
from crawler.cli import cli
from crawler.settings import describe_settings, type_name

README = Path(__file__).resolve().parent.parent / "README.md"


def settings_table() -> str:
    """The README's settings table, rendered from the Settings attribute docstrings."""
    docs = describe_settings()
    defaults = Settings()
    lines = ["| setting | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(Settings):
        default = getattr(defaults, field.name)
        shown = (
            f'"{default}"'
            if isinstance(default, str)
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        lines.append(
            f"| `{field.name}` | {type_name(field.name)} | `{shown}` | {docs[field.name]} |"
        )
    return "\n".join(lines)


def test_readme_lists_every_setting_exactly() -> None:
    expected = settings_table()
    assert expected in README.read_text(), f"update the README settings table to:\n\n{expected}\n"


def test_readme_documents_every_command() -> None:
    text = README.read_text()
    for name in cli.commands:
        assert re.search(rf"`crawler {re.escape(name)}\b", text), (
            f"README does not document `crawler {name}`"
        )


def test_readme_gives_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text


async def test_readme_example_queries_run_on_a_real_crawl(tmp_path: Path) -> None:
    """Every statement in the README's SQL blocks runs against a crawl of the demo catalogue."""
    from aiohttp.test_utils import TestServer

    from crawler import crawl
    from crawler.cli_common import with_start_urls
    from crawler.demo import catalogue_app
    from crawler.discovery import find_spider

    db = tmp_path / "books.db"
    async with TestServer(catalogue_app(book_count=40), host="127.0.0.1") as server:
        spider = with_start_urls(find_spider("books"), [str(server.make_url("/"))])
        await crawl(spider, db=db, settings={"autothrottle": False, "progress_interval": 60.0})
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 6
    with sqlite3.connect(db) as conn:
        for statement in statements:
            conn.execute(statement).fetchall()
        assert conn.execute("SELECT count(*) FROM book WHERE price < 20").fetchone()[0] > 0
