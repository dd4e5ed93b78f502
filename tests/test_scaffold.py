"""`crawler new`: a typed spider that passes mypy --strict, crawls at once, and is never
written over an existing file."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import BaseTestServer

from crawler import Spider
from crawler.cli.scaffold import spider_source
from tests.conftest import ROOT, RunCli, rows

VENV_BIN = Path(sys.executable).parent


async def run_tool(*args: str, cwd: Path = ROOT) -> tuple[int, str]:
    """Run a dev tool of the venv (mypy, ruff) on a file; return its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_new_writes_a_spider_that_passes_mypy_strict_and_ruff(
    tmp_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli("new", "book_shop", "https://books.example/catalogue/", cwd=tmp_path)

    assert result.code == 0, result.stderr
    path = tmp_path / "spiders" / "book_shop.py"
    assert (
        result.stdout
        == f"created {Path('spiders') / 'book_shop.py'}; run it with: crawler crawl book_shop\n"
    )
    source = path.read_text()
    assert "class BookShopSpider(Spider):" in source
    assert 'name = "book_shop"' in source
    assert 'start_urls = ("https://books.example/catalogue/",)' in source
    assert 'allowed_domains = ("books.example",)' in source
    # mypy runs from the repository so it sees the crawler package (an editable install
    # is invisible to mypy); --follow-imports=silent keeps the check to the new file.
    code, output = await run_tool(
        str(VENV_BIN / "mypy"),
        "--strict",
        "--follow-imports=silent",
        "--cache-dir",
        str(tmp_path / "mypy_cache"),
        str(path),
    )
    assert code == 0, output
    code, output = await run_tool(str(VENV_BIN / "ruff"), "check", str(path))
    assert code == 0, output
    code, output = await run_tool(str(VENV_BIN / "ruff"), "format", "--check", str(path))
    assert code == 0, output


async def test_new_spider_crawls_a_local_site_at_once(
    follow_site: BaseTestServer, tmp_path: Path, run_cli: RunCli
) -> None:
    url = str(follow_site.make_url("/"))
    assert (await run_cli("new", "local", url, cwd=tmp_path)).code == 0

    result = await run_cli("crawl", "local", cwd=tmp_path)

    assert result.code == 0, result.stderr
    db = tmp_path / "local.db"
    titles = [json.loads(str(r[0])) for r in rows(db, "SELECT data FROM items WHERE type = 'page'")]
    assert len(titles) == 61  # the index and pages 0-59: every page of the site, once
    assert {t["title"] for t in titles} == {"page"} | {f"Page {n}" for n in range(60)}
    assert rows(db, "SELECT count(*) FROM requests WHERE reason = 'offsite'") == [(1,)]


async def test_new_never_overwrites_a_file(tmp_path: Path, run_cli: RunCli) -> None:
    spiders = tmp_path / "spiders"
    spiders.mkdir()
    (spiders / "shop.py").write_text("# mine\n")

    result = await run_cli("new", "shop", "http://127.0.0.1:8000/", cwd=tmp_path)

    assert result.code == 2
    assert result.stderr == (
        f"error: {Path('spiders') / 'shop.py'} already exists; "
        "choose another name or remove the file\n"
    )
    assert (spiders / "shop.py").read_text() == "# mine\n"


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        (
            "my-shop",
            "http://127.0.0.1/",
            "error: spider name 'my-shop' must be a Python identifier",
        ),
        ("2shop", "http://127.0.0.1/", "error: spider name '2shop' must be a Python identifier"),
        ("class", "http://127.0.0.1/", "error: spider name 'class' must be a Python identifier"),
        ("shop", "127.0.0.1/shop", "error: bad URL '127.0.0.1/shop': expected an absolute http"),
        ("shop", "ftp://127.0.0.1/", "error: bad URL 'ftp://127.0.0.1/': expected an absolute"),
        ("shop", "http://[::1/", "error: bad URL 'http://[::1/': "),
    ],
)
async def test_bad_name_or_url_is_one_line_and_exit_2(
    name: str, url: str, message: str, tmp_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli("new", name, url, cwd=tmp_path)
    assert result.code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(message)
    assert not (tmp_path / "spiders").exists()


async def test_new_with_another_directory_says_how_to_crawl_the_file(
    tmp_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli("new", "shop", "http://127.0.0.1/", "--dir", "crawlers", cwd=tmp_path)

    assert result.code == 0, result.stderr
    path = Path("crawlers") / "shop.py"
    assert result.stdout == f"created {path}; run it with: crawler crawl {path}\n"
    assert (tmp_path / path).is_file()


def test_urls_are_written_as_escaped_literals() -> None:
    source = spider_source("shop", 'https://shop.example/a"b\\c?q=é')
    assert 'start_urls = ("https://shop.example/a\\"b\\\\c?q=\\u00e9",)' in source
    namespace: dict[str, object] = {}
    exec(compile(source, "shop.py", "exec"), namespace)
    spider = namespace["ShopSpider"]
    assert isinstance(spider, type)
    assert issubclass(spider, Spider)
    assert spider.start_urls == ('https://shop.example/a"b\\c?q=é',)
