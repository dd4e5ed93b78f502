"""Typed item tables and dict item views, made by real crawls of a local site."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NewType

import pytest
from aiohttp.test_utils import BaseTestServer, TestServer

from crawler.store.columns import ColumnKind, column_kind, item_fields
from tests.conftest import RunCli, Target, rows, scalar
from tests.databases import is_postgres
from tests.sites import follow_app

SPIDER = """
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from crawler import Response, Spider, text_of


@dataclass
class Page:
    number: int
    title: str
    score: float
    even: bool
    tags: list[str]
    extra: dict[str, Any]
    note: str | None
    created_at: str
    {extra_field}


@dataclass
class Items:
    number: int


@dataclass
class Declared:
    name: str


class ShapesSpider(Spider):
    name = "shapes"
    item_type = "listing"
    item_types = (Page, Declared)

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        n = int(text_of(response.css_first("p.n"), "-1"))
        if n >= 0:
            yield Page(
                number=n,
                title=text_of(response.css_first("h1")),
                score=n / 2,
                even=n % 2 == 0,
                tags=[f"t{{n}}", "all"],
                extra={{"n": n}},
                note=None if n % 2 else "even",
                created_at="yesterday",
                {extra_value}
            )
            yield Items(number=n)
            listing = {{"url": response.url, "n": n}}
            if n % 2:
                listing["odd_only"] = True
            {extra_key}
            yield listing
        for url in response.links():
            yield response.follow(url)
"""


def write_spider(directory: Path, *, version: int) -> Path:
    """Version 2 adds a field `rank` to Page and a key `late` to the dict items."""
    path = directory / f"shapes_v{version}.py"
    v2 = version == 2
    path.write_text(
        SPIDER.format(
            extra_field="rank: int = 0" if v2 else "",
            extra_value="rank=n * 10," if v2 else "",
            extra_key='listing["late"] = "yes"' if v2 else "",
        )
    )
    return path


@pytest.fixture
async def site() -> AsyncIterator[BaseTestServer]:
    async with TestServer(follow_app(pages=60), host="127.0.0.1") as server:
        yield server


async def crawl(
    run_cli: RunCli, site: BaseTestServer, spider: Path, db: Target, start: str, *args: str
) -> None:
    result = await run_cli(
        "crawl", str(spider), "-o", str(db), "--start-url", str(site.make_url(start)), *args
    )
    assert result.code == 0, result.stderr


SQL_TYPES: Final = {
    "sqlite": {"integer": "INTEGER", "text": "TEXT", "real": "REAL", "bool": "INTEGER"},
    "postgresql": {
        "integer": "bigint",
        "text": "text",
        "real": "double precision",
        "bool": "bigint",  # 0 and 1 as in SQLite, so `WHERE even = 1` runs on both
        "json": "jsonb",
    },
}
"""Each column kind's declared type in each backend (SQLite keeps JSON as TEXT)."""


def columns(db: Target, name: str) -> list[tuple[str, str]]:
    """A table's or view's columns and declared types, in order."""
    if is_postgres(db):
        sql = (
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
        )
        return [(str(r[0]), str(r[1])) for r in rows(db, sql, (name,))]
    return [(str(r[1]), str(r[2])) for r in rows(db, f'PRAGMA table_info("{name}")')]


def sql_type(db: Target, kind: str) -> str:
    types = SQL_TYPES["postgresql" if is_postgres(db) else "sqlite"]
    return types.get(kind, types["text"])


@pytest.fixture
async def shapes_db(
    site: BaseTestServer, run_cli: RunCli, tmp_path: Path, database: Target
) -> Target:
    spider = write_spider(tmp_path, version=1)
    await crawl(run_cli, site, spider, database, "/p/0", "--max-pages", "10")
    return database


async def test_dataclass_items_get_a_typed_table_with_a_column_per_field(shapes_db: Target) -> None:
    t = functools.partial(sql_type, shapes_db)
    assert columns(shapes_db, "page") == [
        ("item_id", t("integer")),
        ("number", t("integer")),
        ("title", t("text")),
        ("score", t("real")),
        ("even", t("bool")),
        ("tags", t("json")),
        ("extra", t("json")),
        ("note", t("text")),
        ("created_at_2", t("text")),  # the field; `created_at` is when the row was stored
        ("page_url", t("text")),
        ("crawl_id", t("integer")),
        ("request_id", t("integer")),
        ("created_at", t("text")),
    ]
    numbers = [r[0] for r in rows(shapes_db, "SELECT number FROM page ORDER BY number")]
    assert len(numbers) == 10
    even, odd = numbers[0], next(n for n in numbers if n % 2)
    sql = (
        "SELECT number, title, score, even, tags, extra, note, created_at_2 FROM page "
        "WHERE number = ?"
    )
    ((*plain, tags, extra, note, created),) = rows(shapes_db, sql, (even,))
    assert plain == [even, f"Page {even}", even / 2, True]  # (SQLite's 1 == True)
    assert (json.loads(tags), json.loads(extra)) == ([f"t{even}", "all"], {"n": even})
    assert (note, created) == ("even", "yesterday")
    assert rows(shapes_db, "SELECT even, note FROM page WHERE number = ?", (odd,)) == [(0, None)]
    # Typed values are real SQL types: numbers compare as numbers, JSON columns work with ->>.
    assert scalar(shapes_db, "SELECT count(*) FROM page WHERE score * 2 = number") == 10
    assert scalar(shapes_db, "SELECT count(*) FROM page WHERE tags ->> 0 = 't' || number") == 10
    extra_n = "SELECT count(*) FROM page WHERE CAST(extra ->> 'n' AS INTEGER) = number"
    assert scalar(shapes_db, extra_n) == 10


async def test_typed_rows_are_also_in_items_and_linked_to_their_page(shapes_db: Target) -> None:
    assert scalar(shapes_db, "SELECT count(*) FROM items WHERE type = 'page'") == 10
    mismatched = """
        SELECT count(*) FROM page JOIN items ON items.id = page.item_id
        WHERE items.type != 'page' OR items.data ->> 'title' != page.title
           OR items.request_id != page.request_id OR items.page_url != page.page_url
           OR items.created_at != page.created_at
    """
    assert scalar(shapes_db, mismatched) == 0
    assert (
        scalar(shapes_db, "SELECT count(*) FROM page JOIN items ON items.id = page.item_id") == 10
    )
    joined = "SELECT count(*) FROM page JOIN pages ON pages.request_id = page.request_id"
    assert scalar(shapes_db, joined) == 10
    stats = json.loads(scalar(shapes_db, "SELECT stats FROM crawls"))
    assert stats["items_by_type"] == {"items": 10, "listing": 10, "page": 10}


async def test_name_clashes_declared_types_and_the_registry(shapes_db: Target) -> None:
    registry = rows(shapes_db, "SELECT type, kind, name, json_columns FROM item_tables ORDER BY 1")
    assert [(*row[:3], json.loads(row[3])) for row in registry] == [
        ("declared", "table", "declared", []),
        ("items", "table", "items_items", []),  # `items` is the crawler's own table
        ("listing", "view", "listing_view", []),
        ("page", "table", "page", ["tags", "extra"]),
    ]
    assert scalar(shapes_db, "SELECT count(*) FROM items_items") == 10
    assert columns(shapes_db, "declared")[1] == ("name", sql_type(shapes_db, "text"))
    assert scalar(shapes_db, "SELECT count(*) FROM declared") == 0  # declared, never yielded
    mapping = json.loads(scalar(shapes_db, "SELECT columns FROM item_tables WHERE name = 'page'"))
    assert mapping["created_at"] == "created_at_2"


async def test_dict_items_get_a_view_with_a_column_per_key(shapes_db: Target) -> None:
    assert [c for c, _ in columns(shapes_db, "listing_view")] == [
        "item_id",
        "url",
        "n",
        "odd_only",
        "page_url",
        "crawl_id",
        "request_id",
        "created_at",
    ]
    odd = scalar(shapes_db, "SELECT count(*) FROM page WHERE number % 2 = 1")
    assert scalar(shapes_db, "SELECT count(*) FROM listing_view WHERE odd_only = TRUE") == odd
    assert scalar(shapes_db, "SELECT count(*) FROM listing_view WHERE url = page_url") == 10
    assert scalar(shapes_db, "SELECT sum(n) FROM listing_view") == scalar(
        shapes_db, "SELECT sum(number) FROM page"
    )


async def test_export_decodes_json_columns_and_reads_dict_types(
    shapes_db: Target, run_cli: RunCli
) -> None:
    typed = await run_cli("export", str(shapes_db), "--type", "page", "-f", "jsonl")
    assert typed.code == 0, typed.stderr
    records = [json.loads(line) for line in typed.stdout.splitlines()]
    assert len(records) == 10
    first = records[0]
    assert first["tags"] == [f"t{first['number']}", "all"]
    assert first["extra"] == {"n": first["number"]}
    listing = await run_cli("export", str(shapes_db), "--type", "listing", "-f", "csv")
    assert listing.code == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    assert header == "item_id,url,n,odd_only,page_url,crawl_id,request_id,created_at"
    assert len(lines) == 10
    assert sum(line.split(",")[3] == "true" for line in lines) == scalar(
        shapes_db, "SELECT count(*) FROM listing_view WHERE odd_only = TRUE"
    )


async def test_a_new_field_adds_a_column_and_fresh_starts_over(
    site: BaseTestServer, run_cli: RunCli, tmp_path: Path, database: Target
) -> None:
    v1, v2 = write_spider(tmp_path, version=1), write_spider(tmp_path, version=2)
    await crawl(run_cli, site, v1, database, "/p/0", "--max-pages", "5")
    await crawl(run_cli, site, v2, database, "/p/30", "--max-pages", "9")
    assert [c for c, _ in columns(database, "page")][-1] == "rank"  # ALTER TABLE … ADD COLUMN
    by_rank = rows(
        database, "SELECT rank IS NULL, count(*) FROM page GROUP BY rank IS NULL ORDER BY 1"
    )
    assert by_rank == [(0, 4), (1, 5)]
    assert scalar(database, "SELECT count(*) FROM page WHERE rank = number * 10") == 4
    assert scalar(database, "SELECT count(*) FROM items WHERE type = 'page'") == 9
    assert "late" in [c for c, _ in columns(database, "listing_view")]
    assert scalar(database, "SELECT count(*) FROM listing_view WHERE late = 'yes'") == 4
    await crawl(run_cli, site, v1, database, "/p/0", "--max-pages", "3", "--fresh")
    assert "rank" not in [c for c, _ in columns(database, "page")]
    assert "late" not in [c for c, _ in columns(database, "listing_view")]
    assert scalar(database, "SELECT count(*) FROM page") == 3


@dataclasses.dataclass
class Nested:
    value: int


UserId = NewType("UserId", int)


@pytest.mark.parametrize(
    ("hint", "kind"),
    [
        (int, ColumnKind.INTEGER),
        (bool, ColumnKind.INTEGER),
        (float, ColumnKind.REAL),
        (str, ColumnKind.TEXT),
        (int | None, ColumnKind.INTEGER),
        (typing.Optional[float], ColumnKind.REAL),  # noqa: UP045
        (int | float, ColumnKind.REAL),
        (int | str, ColumnKind.JSON),
        (Literal["a", "b"], ColumnKind.TEXT),
        (Literal[1, 2], ColumnKind.INTEGER),
        (Literal["a", 1], ColumnKind.JSON),
        (UserId, ColumnKind.INTEGER),
        (Annotated[str, "label"], ColumnKind.TEXT),
        (list[str], ColumnKind.JSON),
        (dict[str, int], ColumnKind.JSON),
        (tuple[int, int], ColumnKind.JSON),
        (Nested, ColumnKind.JSON),
        (Any, ColumnKind.JSON),
        ("int", ColumnKind.INTEGER),
        ("str | None", ColumnKind.TEXT),
        ("Optional[float]", ColumnKind.REAL),
        ("list[str]", ColumnKind.JSON),
    ],
)
def test_column_kind_follows_the_type_hint(hint: object, kind: ColumnKind) -> None:
    assert column_kind(hint) is kind


def test_unresolvable_annotations_are_read_as_text() -> None:
    cls = dataclasses.make_dataclass(
        "Unresolved", [("when", "Missing"), ("count", "int | None"), ("name", "str")]
    )
    assert item_fields(cls) == (
        ("when", ColumnKind.JSON),
        ("count", ColumnKind.INTEGER),
        ("name", ColumnKind.TEXT),
    )
