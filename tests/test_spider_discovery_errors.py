"""A spider file that fails to import hides nothing but itself.

Each test builds a project directory with a `spiders/` package holding a working spider and
files that fail to import in each way a file can (a syntax error, a missing module, an
exception at import, directly or in a module it imports), and runs the command line there:
`crawler list` lists the working spiders and prints one line per broken file (file:line and
the error, no traceback), exit 0; `crawler crawl GOOD` crawls; `crawler crawl BROKEN` (the
broken file's name) prints its error in one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
from aiohttp.test_utils import BaseTestServer

from crawler.errors import SpiderError, SpiderNotFound
from crawler.spider.discovery import BrokenSpiderFile, find_spider, spider_catalogue
from tests.conftest import CliResult, RunCli, scalar

GOOD: Final = """
from crawler import Spider


class GoodSpider(Spider):
    name = "good"
    start_urls = ("http://127.0.0.1:9/",)

    async def parse(self, response):
        yield {"url": response.url}
"""
BROKEN: Final[dict[str, tuple[str, int, str]]] = {
    # file stem: (source, line of the error in that file, the error)
    "syntax": (
        'from crawler import Spider\n\n\nclass Syntax(Spider)\n    name = "syntax"\n',
        4,
        "SyntaxError: expected ':'",
    ),
    "missing": (
        "import json\nimport no_such_module_for_this_test\n",
        2,
        "ModuleNotFoundError: No module named 'no_such_module_for_this_test'",
    ),
    "raising": (
        'LIMIT = 3\n\n\ndef check():\n    raise RuntimeError("bad\\nconfig")\n\n\ncheck()\n',
        5,
        "RuntimeError: bad config",  # one line, whatever the message holds
    ),
    "via_helper": (
        "from crawler import Spider\nfrom shop_helpers import parse_price\n",
        2,
        "ZeroDivisionError: division by zero",
    ),
    "exits": ("import sys\n\nsys.exit(3)\n", 3, "SystemExit: 3"),
}
HELPERS: Final = "RATE = 1 / 0\n\n\ndef parse_price(text):\n    return float(text)\n"


def make_project(root: Path, broken: tuple[str, ...] = tuple(BROKEN)) -> Path:
    """A project directory: spiders/ with `good.py` and the `broken` files, and a module
    `shop_helpers.py` that fails at import (the command line runs with the project first on
    `sys.path`, as `python -m` puts the current directory there)."""
    package = root / "project" / "spiders"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(GOOD)
    (package.parent / "shop_helpers.py").write_text(HELPERS)
    for stem in broken:
        (package / f"{stem}.py").write_text(BROKEN[stem][0])
    return package.parent


def expected_line(stem: str) -> str:
    _, line, error = BROKEN[stem]
    return f"spiders/{stem}.py:{line}: {error}"


def assert_one_line_error(result: CliResult, text: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert text in result.stderr, result.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


async def test_list_shows_the_working_spiders_and_one_line_per_broken_file(
    project: Path, run_cli: RunCli
) -> None:
    result = await run_cli("list", cwd=project)
    assert result.code == 0, result.stderr
    listed = {line.split("│")[1].strip() for line in result.stdout.splitlines() if "│" in line}
    assert {"good", "books", "quotes", "site"} <= listed
    assert "Traceback" not in result.stderr and result.stderr == ""
    # one row per broken file, in the table, with where and why
    rows_ = [line for line in result.stdout.splitlines() if "cannot import" in line]
    assert len(rows_) == len(BROKEN)
    for row, stem in zip(rows_, sorted(BROKEN), strict=True):
        assert expected_line(stem)[:40] in row


async def test_a_good_spider_crawls_beside_broken_files(
    project: Path, follow_site: BaseTestServer, run_cli: RunCli
) -> None:
    start = str(follow_site.make_url("/p/0"))
    args = ("crawl", "good", "--start-url", start, "--max-pages", "3", "-o", "good.db")
    result = await run_cli(*args, cwd=project)
    assert result.code == 0, result.stderr
    assert scalar(project / "good.db", "SELECT count(*) FROM items WHERE type = 'item'") == 1
    assert "Traceback" not in result.stderr
    warned = [line for line in result.stderr.splitlines() if "cannot import" in line]
    assert len(warned) == len(BROKEN)  # a warning for each, the crawl goes on


@pytest.mark.parametrize("stem", sorted(BROKEN))
async def test_crawling_the_broken_spider_reports_its_import_error(
    stem: str, tmp_path: Path, run_cli: RunCli
) -> None:
    project = make_project(tmp_path, broken=(stem,))
    result = await run_cli("crawl", stem, "--max-pages", "1", cwd=project)
    assert_one_line_error(result, f"error: spider {stem!r}: cannot import {expected_line(stem)}")
    assert not (project / f"{stem}.db").exists()


async def test_a_broken_local_file_is_not_replaced_by_a_bundled_spider_of_its_name(
    tmp_path: Path, run_cli: RunCli
) -> None:
    """A local `books.py` that fails to import would define the local `books` spider, which
    comes before the bundled one: the bundled one must not crawl instead."""
    project = make_project(tmp_path, broken=())
    (project / "spiders" / "books.py").write_text("import no_such_module_for_this_test\n")
    result = await run_cli("crawl", "books", "--explain", cwd=project)
    assert_one_line_error(result, "cannot import spiders/books.py:1: ModuleNotFoundError")


async def test_an_unknown_name_lists_the_files_that_failed_to_import(
    project: Path, run_cli: RunCli
) -> None:
    result = await run_cli("crawl", "nosuchspider", cwd=project)
    assert_one_line_error(result, "unknown spider 'nosuchspider' (known spiders: books, good, ")
    assert "; spider files that failed to import: spiders/exits.py, spiders/missing.py, " in (
        result.stderr
    )


async def test_a_broken_file_named_on_the_command_line_is_one_line(
    project: Path, run_cli: RunCli
) -> None:
    result = await run_cli("crawl", "spiders/raising.py", cwd=project)
    assert_one_line_error(result, f"error: cannot import {expected_line('raising')}")


def test_the_catalogue_in_process(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    catalogue = spider_catalogue()
    assert "good" in catalogue.spiders and "books" in catalogue.spiders
    by_stem = {file.path.stem: file for file in catalogue.broken}
    assert sorted(by_stem) == sorted(BROKEN)
    for stem, (_, line, error) in BROKEN.items():
        assert by_stem[stem] == BrokenSpiderFile(Path(f"spiders/{stem}.py"), line, error)
    assert find_spider("good").name == "good"
    with pytest.raises(SpiderError, match=r"^spider 'syntax': cannot import spiders/syntax\.py:4"):
        find_spider("syntax")
    with pytest.raises(SpiderNotFound, match="spider files that failed to import"):
        find_spider("nosuchspider")
