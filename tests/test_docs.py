"""The README stays true: every setting with its default and meaning, every command, and
every python block of the README and docs/ runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
import sqlite3
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from crawler import Settings
from crawler.cli.main import cli
from crawler.settings import describe_settings, type_name
from tests.databases import Target, rows, scalar

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


async def test_readme_example_queries_run_on_a_real_crawl(database: Target) -> None:
    """Every statement in the README's SQL blocks runs against a crawl of the demo catalogue,
    in a SQLite file and in a PostgreSQL database."""
    from aiohttp.test_utils import TestServer

    from crawler import crawl
    from crawler.cli.common import with_start_urls
    from crawler.demo import catalogue_app
    from crawler.spider.discovery import find_spider

    async with TestServer(catalogue_app(book_count=40), host="127.0.0.1") as server:
        spider = with_start_urls(find_spider("books"), [str(server.make_url("/"))])
        settings = {"autothrottle": False, "progress_interval": 60.0}
        await crawl(spider, db=database, settings=settings)
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 6
    for statement in statements:  # parameters (`:upc`) are bound to NULL
        names = re.findall(r"(?<!:):(\w+)", statement)
        rows(database, re.sub(r"(?<!:):(\w+)", "?", statement), tuple([None] * len(names)))
    cheap = "SELECT count(*) FROM book WHERE price < 20"
    assert scalar(database, cheap) > 0
    from_items = [s for s in statements if "CAST(data ->> 'price' AS REAL) < 20" in s]
    assert len(rows(database, from_items[0])) == scalar(database, cheap)


DOCS = [README, *sorted((README.parent / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
NOT_RUN: Final = {
    ("docs/querying.md", "import pandas as pd"): "needs pandas, which the crawler does not need",
}
"""Python blocks no test runs, by (document, a line of the block), with the reason."""
WRITTEN_BY_THE_TUTORIAL_TEST: Final = ("file=", "expect=")
"""docs/tutorial.md's files: tests/test_tutorial.py writes and runs (or compares) them."""
DEMO_SITE: Final = {"https://books.toscrape.com/": "{url}/", "books.toscrape.com": "127.0.0.1"}
"""The snippets' site, replaced by the demo catalogue served by the test (same markup)."""


@dataclass(frozen=True)
class PythonBlock:
    doc: str
    info: str
    code: str

    def reason_not_run(self) -> str | None:
        for (doc, line), reason in NOT_RUN.items():
            if doc == self.doc and line in self.code.splitlines():
                return reason
        if any(self.info.strip().startswith(a) for a in WRITTEN_BY_THE_TUTORIAL_TEST):
            return "run by tests/test_tutorial.py"
        return None


def python_blocks() -> list[PythonBlock]:
    return [
        PythonBlock(str(doc.relative_to(README.parent)), info, code)
        for doc in DOCS
        for info, code in PYTHON_BLOCK.findall(doc.read_text())
    ]


def test_every_python_block_is_run_or_listed_with_a_reason() -> None:
    """A new ```python block is run by test_the_python_blocks_run (this file) unless it is
    listed in NOT_RUN or is one of the tutorial's files; a listing must still match."""
    blocks = python_blocks()
    assert len(blocks) >= 7
    for doc, line in NOT_RUN:
        assert any(b.doc == doc and line in b.code.splitlines() for b in blocks), (doc, line)
    tutorial = [b for b in blocks if b.doc == "docs/tutorial.md"]
    assert all(b.reason_not_run() == "run by tests/test_tutorial.py" for b in tutorial)


@pytest.fixture
def demo_site(tmp_path: Path) -> Iterator[str]:
    """`crawler serve-demo` on a free port: the snippets run their own event loops."""
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", "serve-demo", "--port", "0", "--size", "40"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.match(r"serving the demo books site at (\S+)/ ", process.stdout.readline())
        assert match, "serve-demo did not start"
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)  # and close its pipe


@pytest.mark.parametrize("doc", [str(d.relative_to(README.parent)) for d in DOCS])
def test_the_python_blocks_run(
    doc: str, demo_site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document's python blocks run in order as one module, in an empty directory, against
    the demo catalogue (the README's spiders crawl it: their items are checked)."""
    blocks = [b for b in python_blocks() if b.doc == doc and b.reason_not_run() is None]
    source = "\n\n".join(b.code for b in blocks)
    for site, local in DEMO_SITE.items():
        source = source.replace(site, local.format(url=demo_site))
    monkeypatch.chdir(tmp_path)
    name = "doc_" + re.sub(r"\W", "_", doc)
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses and type hints look here
    exec(compile(source, doc, "exec"), module.__dict__)
    if doc != "README.md":
        return
    # "As a library" crawled with the BooksSpider of "A spider"; "Link rules" is crawled here.
    books = sqlite3.connect(tmp_path / "books.db")
    with contextlib.closing(books):
        assert books.execute("SELECT count(*) FROM book WHERE price > 0").fetchone()[0] > 10
    from crawler import crawl

    asyncio.run(crawl(module.ShopSpider, db="shop.db", settings={"autothrottle": False}))
    shop = sqlite3.connect(tmp_path / "shop.db")
    with contextlib.closing(shop):
        assert shop.execute("SELECT count(*) FROM product").fetchone()[0] == 40
