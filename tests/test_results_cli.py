"""query, export, stats and parse as real subprocesses, on a real crawl of the local catalogue."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer

from crawler.demo import expected_books
from tests.conftest import ROOT, RunCli, rows, scalar
from tests.results_site import BOOKS, copy_database, crawl_books_once, results_site

BOOK_FIELDS = ("title", "price", "availability", "rating", "upc", "category")


@pytest.fixture
async def site() -> AsyncIterator[BaseTestServer]:
    async with results_site() as server:
        yield server


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One crawl of the site for the module; each test gets its own copy (`books_db`)."""
    return crawl_books_once(tmp_path_factory.mktemp("crawled") / "books.db")


@pytest.fixture
def books_db(crawled: Path, db_path: Path) -> Path:
    return copy_database(crawled, db_path)


def expected(max_price: float = 1e9) -> list[dict[str, Any]]:
    """The catalogue's books under `max_price`, by price then title, as the spider reads them."""
    books: list[dict[str, Any]] = [{k: b[k] for k in BOOK_FIELDS} for b in expected_books(BOOKS)]
    cheap = [b for b in books if b["price"] < max_price]
    return sorted(cheap, key=lambda b: (b["price"], b["title"]))


def partial_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.part"))


def assert_one_line_error(result: Any, code: int = 2) -> None:
    assert result.code == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


async def test_query_output_formats_parse_back(books_db: Path, run_cli: RunCli) -> None:
    sql = "SELECT title, price, rating FROM book WHERE price < :max ORDER BY price, title"
    want = [{k: b[k] for k in ("title", "price", "rating")} for b in expected(30)]
    assert want
    as_json = await run_cli("query", str(books_db), sql, "-p", "max=30", "--format", "json")
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == want
    as_jsonl = await run_cli("query", str(books_db), sql, "--param", "max=30", "-f", "jsonl")
    assert [json.loads(line) for line in as_jsonl.stdout.splitlines()] == want
    as_csv = await run_cli("query", str(books_db), sql, "-p", "max=30", "-f", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["title"], float(r["price"]), int(r["rating"])) for r in parsed] == [
        (b["title"], b["price"], b["rating"]) for b in want
    ]
    as_table = await run_cli("query", str(books_db), sql, "-p", "max=30", "-f", "table")
    assert as_table.code == 0, as_table.stderr
    assert all(b["title"][:20] in as_table.stdout for b in want)
    # Named parameters bind anywhere, several at once.
    both = await run_cli(
        "query",
        str(books_db),
        "SELECT count(*) AS n FROM book WHERE category = :cat AND rating >= :stars",
        "-p",
        "cat=Mystery",
        "-p",
        ":stars=3",
        "-f",
        "json",
    )
    count = sum(1 for b in expected() if b["category"] == "Mystery" and b["rating"] >= 3)
    assert json.loads(both.stdout) == [{"n": count}]


async def test_query_is_read_only_unless_write(books_db: Path, run_cli: RunCli) -> None:
    refused = await run_cli("query", str(books_db), "UPDATE book SET price = 0")
    assert_one_line_error(refused)
    assert "read-only" in refused.stderr and "--write" in refused.stderr
    assert scalar(books_db, "SELECT count(*) FROM book WHERE price = 0") == 0
    written = await run_cli(
        "query", str(books_db), "UPDATE book SET price = 0 WHERE upc = :upc", "-p",
        f"upc={expected()[0]['upc']}", "--write",
    )  # fmt: skip
    assert written.code == 0, written.stderr
    assert "1 rows changed" in written.stderr
    assert scalar(books_db, "SELECT count(*) FROM book WHERE price = 0") == 1


async def test_query_bad_inputs_are_one_line_and_exit_2(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database " * 200)
    cases = [
        (["query", str(books_db), "SELECT nope FROM book"], "error: SQL error: no such column"),
        (["query", str(books_db), "SELEC 1"], 'error: SQL error: near "SELEC"'),
        (["query", str(books_db), "SELECT :x", "-p", "novalue"], "--param expects NAME=VALUE"),
        (["query", str(books_db), "SELECT 1; SELECT 2"], "one statement at a time"),
        (["query", str(tmp_path / "none.db"), "SELECT 1"], "no such database file"),
        (["query", str(not_sqlite), "SELECT 1"], "file is not a database"),
        (["export", str(not_sqlite), "-t", "book"], "file is not a database"),
        (["stats", str(tmp_path / "none.db")], "no such database file"),
    ]
    for args, message in cases:
        result = await run_cli(*args)
        assert_one_line_error(result)
        assert message in result.stderr, (args, result.stderr)


async def test_export_formats_and_destinations(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    by_upc = {b["upc"]: b for b in expected()}
    out = tmp_path / "books.jsonl"
    result = await run_cli("export", str(books_db), "--type", "book", "-f", "jsonl", "-o", str(out))
    assert result.code == 0, result.stderr
    assert f"exported {BOOKS} book rows" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["upc"]: {k: r[k] for k in BOOK_FIELDS} for r in records} == by_upc
    assert {"item_id", "page_url", "crawl_id", "request_id", "created_at"} <= set(records[0])
    as_csv = tmp_path / "books.csv"  # the format follows the suffix
    result = await run_cli("export", str(books_db), "-t", "book", "-o", str(as_csv))
    assert result.code == 0, result.stderr
    with as_csv.open(newline="") as f:
        parsed = list(csv.DictReader(f))
    assert sorted(r["upc"] for r in parsed) == sorted(by_upc)
    assert {float(r["price"]) for r in parsed} == {b["price"] for b in by_upc.values()}
    stdout = await run_cli("export", str(books_db), "-t", "book", "-f", "json", "-o", "-")
    assert stdout.code == 0, stdout.stderr
    assert [r["upc"] for r in json.loads(stdout.stdout)] == [r["upc"] for r in records]
    assert not partial_files(tmp_path)


async def test_export_of_an_unknown_type_lists_the_known_ones(
    books_db: Path, run_cli: RunCli
) -> None:
    result = await run_cli("export", str(books_db), "--type", "film")
    assert_one_line_error(result)
    assert "unknown item type 'film' (known types: book)" in result.stderr


async def run_measured(*args: str) -> tuple[int, int, str]:
    """Run the CLI in a subprocess that reports its own peak RSS (KiB) on exit."""
    code = (
        "import atexit, resource, sys\n"
        "atexit.register(lambda: print('maxrss', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
        "from crawler.cli.main import main\n"
        "sys.argv = ['crawler', *sys.argv[1:]]\n"
        "main()\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    text = stderr.decode()
    peak = int(text.rsplit("maxrss ", 1)[1].split()[0])
    assert process.returncode is not None
    return process.returncode, peak, text


async def test_export_streams_a_large_table_in_flat_memory(books_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    code, small_peak, text = await run_measured(
        "export", str(books_db), "-t", "book", "-o", str(out)
    )
    assert code == 0, text
    many = 300_000
    row = ("A title long enough to weigh something " * 2, 12.5, "In stock (3 available)", 4)
    with sqlite3.connect(books_db) as conn:
        conn.executemany(
            "INSERT INTO book (title, price, availability, rating, upc, category, page_url, "
            "crawl_id, request_id, created_at) VALUES (?, ?, ?, ?, ?, 'Filler', "
            "'http://127.0.0.1/filler', 1, 1, '2024-01-01T00:00:00.000+00:00')",
            ((*row, f"{i:016x}") for i in range(many)),
        )
    code, large_peak, text = await run_measured(
        "export", str(books_db), "-t", "book", "-o", str(out)
    )
    assert code == 0, text
    with out.open() as f:
        assert sum(1 for _ in f) == many + BOOKS
    # Holding the rows would cost well over 100 MB; streaming costs next to nothing more.
    assert large_peak - small_peak < 40 * 1024, (small_peak, large_peak)


async def test_stats_summarises_the_crawl_from_the_tables(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    result = await run_cli("stats", str(books_db), "--format", "json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    pages = scalar(books_db, "SELECT count(*) FROM pages")
    assert report["spider"] == "books" and report["status"] == "finished"
    assert report["pages"] == pages
    assert report["pages_by_status"] == {"200": pages - 1, "404": 1}
    assert report["items_by_type"] == {"book": BOOKS}
    assert report["errors_by_kind"]["spider"] == 1  # the product page without a price
    assert report["skipped_by_reason"] == {"offsite": 1}
    assert report["failed_by_reason"] == {"http_status": 1}
    assert report["requests_by_state"] == {"done": pages - 1, "failed": 1, "skipped": 1}
    assert sum(report["pages_by_depth"].values()) == pages
    assert report["pages_by_depth"]["0"] == 3  # three start URLs
    assert report["top_hosts"] == {"127.0.0.1": pages}
    assert report["content_types"] == {"text/html": pages}
    assert report["bytes_fetched"] == scalar(books_db, "SELECT sum(size_bytes) FROM pages")
    assert report["duration_s"] > 0 and report["pages_per_second"] > 0
    assert report["item_tables"] == {"book (table)": "book"}
    table = await run_cli("stats", str(books_db))
    assert table.code == 0, table.stderr
    for heading in ("pages by status", "pages by depth", "skipped requests", "errors", "items"):
        assert heading in table.stdout
    assert "offsite" in table.stdout and "404" in table.stdout


async def test_stats_on_an_interrupted_and_an_empty_crawl(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    interrupted = tmp_path / "interrupted.db"
    shutil.copy(books_db, interrupted)
    with sqlite3.connect(interrupted) as conn:  # as a killed run leaves it
        conn.execute("UPDATE crawls SET status = 'running', finished_at = NULL, stats = NULL")
        conn.execute(
            "UPDATE requests SET state = 'pending' WHERE id IN (SELECT id FROM requests LIMIT 5)"
        )
    result = await run_cli("stats", str(interrupted), "-f", "json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "running" and report["requests_by_state"]["pending"] == 5
    assert report["duration_s"] > 0  # up to the last page fetched
    empty = tmp_path / "empty.db"
    crawl = await run_cli(
        "crawl", "books", "-o", str(empty), "--start-url", "http://127.0.0.1:9/",
        "-s", "max_retries=0",
    )  # fmt: skip
    assert crawl.code == 1, crawl.stderr  # every start request failed
    result = await run_cli("stats", str(empty), "-f", "json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["pages"], report["items"], report["pages_per_second"]) == (0, 0, 0.0)
    assert sum(report["requests_by_state"].values()) == 1  # the start URL, failed or skipped


async def test_stats_and_export_refuse_other_sqlite_files(tmp_path: Path, run_cli: RunCli) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE pages (x)")
    for args in (["stats", str(other)], ["export", str(other), "-t", "book"]):
        result = await run_cli(*args)
        assert_one_line_error(result)
        assert "is not a crawl database" in result.stderr


async def test_parse_fetches_a_page_and_shows_items_and_requests(
    site: BaseTestServer, run_cli: RunCli
) -> None:
    book = expected_books(BOOKS)[0]
    product = str(site.make_url(str(book["url"])))
    result = await run_cli("parse", "books", product, "--callback", "parse_book", "-f", "json")
    assert result.code == 0, result.stderr
    page = json.loads(result.stdout)
    assert (page["status"], page["callback"], page["parsed"]) == (200, "parse_book", True)
    assert page["items"] == [{"type": "book", "data": {k: book[k] for k in BOOK_FIELDS}}]
    listing = await run_cli("parse", "books", str(site.make_url("/")))
    assert listing.code == 0, listing.stderr
    assert "items (0):" in listing.stdout
    lines = listing.stdout.splitlines()
    product_lines = [line for line in lines if line.startswith("parse_book")]
    assert len(product_lines) == 20  # a listing page shows 20 books, each at depth 1
    assert all(" depth 1 " in line for line in product_lines)
    assert any(line.endswith(product) for line in product_lines)
    offsite = await run_cli("parse", "books", str(site.make_url("/extra.html")), "-f", "json")
    assert json.loads(offsite.stdout)["skipped"] == [
        {"url": "http://offsite.invalid/book.html", "reason": "offsite", "depth": 1}
    ]


async def test_parse_reads_a_stored_page_and_reports_callback_errors(
    books_db: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    # The site that was crawled is gone: nothing can be fetched, everything is read.
    book = expected_books(BOOKS)[3]
    url = str(scalar(books_db, "SELECT url FROM pages WHERE url LIKE ?", (f"%{book['url']}",)))
    home = str(scalar(books_db, "SELECT url FROM pages WHERE depth = 0 AND url LIKE '%/'"))
    stored = await run_cli("parse", "books", url, "--from", str(books_db), "-f", "json")
    assert stored.code == 0, stored.stderr
    page = json.loads(stored.stdout)
    assert page["callback"] == "parse_book"  # the callback the crawl used
    assert page["items"][0]["data"]["upc"] == book["upc"]
    assert rows(books_db, "SELECT count(*) FROM items") == [(BOOKS,)]  # nothing written
    failing = await run_cli("parse", "books", home, "--from", str(books_db), "-c", "parse_book")
    assert failing.code == 1
    assert "error (spider): ValueError" in failing.stderr
    no_bodies = tmp_path / "no-bodies.db"
    shutil.copy(books_db, no_bodies)
    with sqlite3.connect(no_bodies) as conn:
        conn.execute("UPDATE pages SET body = NULL")
    cases = [
        (["parse", "books", url, "--from", str(no_bodies)], "without its body"),
        (["parse", "books", home + "nowhere.html", "--from", str(books_db)], "has no page"),
        (["parse", "books", url, "--from", str(books_db), "-c", "nope"], "no callback named"),
        (["parse", "books", "not a url"], "bad start URL"),
        (["parse", "books", url], "cannot fetch"),
    ]
    for args, message in cases:
        result = await run_cli(*args, "-s", "max_retries=0")
        assert_one_line_error(result)
        assert message in result.stderr, (args, result.stderr)
