"""Item processing: field validation and conversion, process_item, item_errors, de-duplication."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytest
from aiohttp.test_utils import BaseTestServer
from rich.console import Console

from crawler import Request, Response, Spider, SpiderError, crawl, text_of
from crawler.cli.common import with_start_urls
from crawler.engine.callbacks import serialise_item
from crawler.spider.items import ItemProcessor, item_key
from crawler.spider.validation import Invalid, validate_item
from crawler.stats import render_summary
from tests.conftest import Target, rows, scalar

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0}


def case(hint: Any, value: object) -> Any:
    """An instance of a one-field dataclass whose `value` field is annotated `hint`."""
    cls = dataclasses.make_dataclass("Case", [("value", hint)])
    return cls(value)


@pytest.mark.parametrize(
    ("hint", "value", "expected"),
    [
        (float, "12.50", 12.5),
        (float, " 3 ", 3.0),
        (float, "-1e3", -1000.0),
        (float, 3, 3.0),
        (int, "3", 3),
        (int, " -7 ", -7),
        (int, 4.0, 4),
        (bool, "true", True),
        (bool, " False ", False),
        (list[float], ["1.5", 2], [1.5, 2.0]),
        (list[int], ("1", 2), [1, 2]),
        (tuple[int, ...], ["1", "2"], (1, 2)),
        (dict[str, int], {"a": "1"}, {"a": 1}),
        (dict[str, list[bool]], {"a": ["true"]}, {"a": [True]}),
        (int | None, "5", 5),
        (float | None, None, None),
        (int | str, "3", "3"),  # already a str: kept, not converted
        (int | float, "2.5", 2.5),
    ],
)
def test_strings_that_spell_one_value_are_converted(
    hint: Any, value: object, expected: object
) -> None:
    checked = validate_item(case(hint, value))
    assert not isinstance(checked, Invalid), checked
    assert checked.value == expected
    assert type(checked.value) is type(expected)


@pytest.mark.parametrize(
    ("hint", "value", "field", "message"),
    [
        (int, "12.50", "value", "expected int, got '12.50' (str)"),
        (int, 3.5, "value", "expected int, got 3.5 (float)"),
        (int, True, "value", "expected int, got True (bool)"),
        (float, "£12.50", "value", "expected float, got '£12.50' (str)"),
        (float, "nan", "value", "expected float, got 'nan' (str)"),
        (float, float("inf"), "value", "expected float, got inf (float)"),
        (float, 2**60 + 1, "value", "expected float"),  # would be rounded
        (bool, "yes", "value", "expected bool, got 'yes' (str)"),
        (bool, 1, "value", "expected bool, got 1 (int)"),
        (str, 12, "value", "expected str, got 12 (int)"),
        (str, None, "value", "expected str, got None (NoneType)"),
        (list[int], "1,2", "value", "expected list[int], got '1,2' (str)"),
        (list[int], [1, "x"], "value[1]", "expected int, got 'x' (str)"),
        (dict[str, int], {1: 1}, "value", "keys must be strings"),
        (dict[str, int], {"a": "b"}, "value['a']", "expected int, got 'b' (str)"),
        (int | None, "", "value", "expected int | None, got '' (str)"),
        (Literal["a", "b"], "c", "value", "expected Literal['a', 'b'], got 'c' (str)"),
        (tuple[int, str], [1], "value", "expected 2 values, got 1"),
    ],
)
def test_lossy_or_wrong_values_are_refused(
    hint: Any, value: object, field: str, message: str
) -> None:
    checked = validate_item(case(hint, value))
    assert isinstance(checked, Invalid)
    assert checked.field == field
    assert message in checked.message


@dataclass
class Product:
    """A typed item with a conversion-prone field."""

    name: str
    price: float
    stock: int
    tags: list[str] = dataclasses.field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True)
class Frozen:
    number: int


@dataclass
class Box:
    label: str
    product: Product


def test_a_fitting_item_is_returned_itself() -> None:
    item = Product("pen", 1.5, 3, ["office"])
    assert validate_item(item) is item


def test_conversion_returns_a_copy_and_leaves_the_original_alone() -> None:
    item = Product("pen", "1.50", "3")  # type: ignore[arg-type]
    checked = validate_item(item)
    assert checked == Product("pen", 1.5, 3)
    assert item == Product("pen", "1.50", "3")  # type: ignore[arg-type]
    assert validate_item(Frozen("7")) == Frozen(7)  # type: ignore[arg-type]


def test_every_bad_field_is_named_and_the_first_is_the_field() -> None:
    checked = validate_item(Product(3, "£1", 2.5))  # type: ignore[arg-type]
    assert checked == Invalid(
        field="name",
        message="name: expected str, got 3 (int); price: expected float, got '£1' (str); "
        "stock: expected int, got 2.5 (float)",
    )


def test_nested_dataclasses_are_checked_and_converted() -> None:
    assert validate_item(Box("a", Product("pen", "2", 1))) == Box("a", Product("pen", 2.0, 1))  # type: ignore[arg-type]
    checked = validate_item(Box("a", Product("pen", "x", 1)))  # type: ignore[arg-type]
    assert isinstance(checked, Invalid)
    assert checked.field == "product.price"
    checked = validate_item(Box("a", {"name": "pen"}))  # type: ignore[arg-type]
    assert isinstance(checked, Invalid)
    assert checked.field == "product"


def test_dict_items_are_not_checked() -> None:
    item = {"price": "£1"}
    assert validate_item(item) is item


def test_item_keys_depend_on_the_key_fields_only() -> None:
    one = item_key("book", json.dumps({"upc": "a1", "title": "x"}), ("upc",))
    two = item_key("book", json.dumps({"upc": "a1", "title": "y"}), ("upc",))
    three = item_key("book", json.dumps({"upc": "a2", "title": "x"}), ("upc",))
    assert not isinstance(one, Invalid)
    assert not isinstance(three, Invalid)
    assert one == two
    assert one.key == '["a1"]'
    assert one.key_hash != three.key_hash
    missing = item_key("book", json.dumps({"title": "x"}), ("upc", "isbn"))
    assert missing == Invalid(field="upc", message="de-duplication field(s) missing: upc, isbn")


class BareSpider(Spider):
    name = "bare"

    async def parse(self, response: Response) -> AsyncIterator[Request]:
        for url in response.links():
            yield response.follow(url)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("upc", "must be a tuple of field names such as ('upc',)"),
        (("upc", 3), "field names must be non-empty strings"),
        ({"book": "upc"}, "must be a tuple of field names"),
    ],
)
def test_malformed_dedupe_items_by_is_a_spider_error(setting: object, message: str) -> None:
    spider = type("Deduping", (BareSpider,), {"name": "deduping", "dedupe_items_by": setting})
    with pytest.raises(SpiderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ItemProcessor(spider())


def test_a_process_item_that_is_not_async_is_a_spider_error() -> None:
    def process_item(self: Spider, item: object, response: Response) -> object:
        return item

    spider = type("Syncing", (BareSpider,), {"name": "syncing", "process_item": process_item})
    with pytest.raises(SpiderError, match="must be an `async def` method"):
        ItemProcessor(spider())


# Crawls of the 60-page follow site (tests.sites.follow_app): page n shows its number n.


@dataclass
class Reading:
    """One page's number, with conversion-prone fields."""

    page: int
    price: float
    title: str


class ReadingSpider(Spider):
    """Yields a Reading per page: price "n.50" (converted), or "£n" (invalid) on every 3rd."""

    name = "reading"

    async def parse(self, response: Response) -> AsyncIterator[Reading | Request]:
        if number := text_of(response.css_first("p.n")):
            n = int(number)
            price = f"£{n}" if n % 3 == 0 else f"{n}.50"
            yield Reading(page=number, price=price, title=text_of(response.css_first("h1")))  # type: ignore[arg-type]
        for url in response.links():
            yield response.follow(url)


class ProcessingSpider(ReadingSpider):
    """Drops odd pages in process_item, upper-cases the others' titles, fails on page 10."""

    name = "processing"

    async def process_item(self, item: Reading, response: Response) -> Reading | None:
        assert isinstance(item.page, int)  # validated before process_item sees it
        if item.page == 10:
            raise RuntimeError("page ten is unlucky")
        if item.page % 2:
            return None
        return dataclasses.replace(item, title=item.title.upper())


def start(server: BaseTestServer) -> str:
    return str(server.make_url("/p/0"))


async def test_invalid_items_are_recorded_and_the_crawl_goes_on(
    follow_site: BaseTestServer, database: Target
) -> None:
    stats = await crawl(
        with_start_urls(ReadingSpider, [start(follow_site)]), db=database, settings=FAST
    )

    assert stats["pages"] == 60
    assert stats["items"] == 40 == scalar(database, "SELECT count(*) FROM items")
    assert stats["items_dropped"] == {"invalid": 20}
    assert scalar(database, "SELECT count(*) FROM item_errors") == 20
    url, callback, item_type, field, message, data = rows(
        database,
        "SELECT url, callback, item_type, field, message, data FROM item_errors "
        "WHERE url LIKE '%/p/3'",
    )[0]
    assert str(url).endswith("/p/3")
    assert (callback, item_type, field) == ("parse", "reading", "price")
    assert message == "price: expected float, got '£3' (str)"
    assert json.loads(str(data)) == {"page": "3", "price": "£3", "title": "Page 3"}
    stored = [json.loads(str(r[0])) for r in rows(database, "SELECT data FROM items")]
    (four,) = [(d["page"], d["price"]) for d in stored if d["page"] == 4]
    assert four == (4, 4.5) and isinstance(four[1], float)  # "4" and "4.50" were converted
    assert json.loads(scalar(database, "SELECT stats FROM crawls")) == stats


async def test_process_item_changes_drops_and_fails_items(
    follow_site: BaseTestServer, database: Target
) -> None:
    spider = with_start_urls(ProcessingSpider, [start(follow_site)])
    stats = await crawl(spider, db=database, settings=FAST)

    pages = [int(str(r[0])) for r in rows(database, "SELECT data ->> 'page' FROM items")]
    expected = [n for n in range(60) if n % 2 == 0 and n % 3 != 0 and n != 10]
    assert sorted(pages) == expected
    titles = {str(r[0]) for r in rows(database, "SELECT data ->> 'title' FROM items")}
    assert titles == {f"PAGE {n}" for n in expected}
    odd_valid = [n for n in range(60) if n % 2 == 1 and n % 3 != 0]
    assert stats["items_dropped"] == {"invalid": 20, "process_item": len(odd_valid)}
    assert stats["items"] == len(expected)
    errors = rows(database, "SELECT url, kind, callback, message FROM errors")
    assert len(errors) == 1
    assert str(errors[0][0]).endswith("/p/10")
    assert errors[0][1:] == (
        "spider",
        "parse",
        "process_item failed: RuntimeError: page ten is unlucky",
    )
    assert stats["errors"] == {"spider": 1}


class KeyedSpider(Spider):
    """Yields `{"key": n % 10, "page": n}` per page (dicts), de-duplicated by key."""

    name = "keyed"
    dedupe_items_by = ("key",)

    async def parse(self, response: Response) -> AsyncIterator[dict[str, int] | Request]:
        if number := text_of(response.css_first("p.n")):
            yield {"key": int(number) % 10, "page": int(number)}
        for url in response.links():
            yield response.follow(url)


async def test_items_are_deduplicated_across_a_resume(
    follow_site: BaseTestServer, database: Target
) -> None:
    spider = with_start_urls(KeyedSpider, [start(follow_site)])
    first = await crawl(spider, db=database, settings={**FAST, "max_pages": 12})
    first_keys = {int(str(r[0])) for r in rows(database, "SELECT data ->> 'key' FROM items")}
    assert first["pages"] == 12
    assert first["items"] == len(first_keys) == scalar(database, "SELECT count(*) FROM item_keys")

    second = await crawl(spider, db=database, settings=FAST)  # resumes: the other 48 pages

    assert scalar(database, "SELECT count(*) FROM pages") == 60
    keys = rows(database, "SELECT data ->> 'key', count(*) FROM items GROUP BY 1")
    assert sorted((int(str(k)), n) for k, n in keys) == [(k, 1) for k in range(10)]
    assert second["items"] == 10 - len(first_keys)
    assert second["items_dropped"]["duplicate"] == 48 - second["items"]
    assert first["items_dropped"].get("duplicate", 0) + second["items_dropped"]["duplicate"] == 50
    assert rows(database, "SELECT type, key FROM item_keys ORDER BY key") == [
        ("item", f"[{k}]") for k in range(10)
    ]

    third = await crawl(spider, db=database, settings=FAST, fresh=True)  # --fresh forgets keys
    assert third["items"] == 10
    assert scalar(database, "SELECT count(*) FROM item_keys") == 10


@dataclass
class Mark:
    """A page's number modulo 4."""

    mod: int


class PerTypeSpider(Spider):
    """De-duplicates Mark items by `mod`; its dict items (type `item`) are not de-duplicated."""

    name = "per_type"
    dedupe_items_by: ClassVar[Mapping[str, Sequence[str]]] = {"mark": ("mod",), "odd": ("missing",)}

    async def parse(self, response: Response) -> AsyncIterator[Mark | dict[str, Any] | Request]:
        if number := text_of(response.css_first("p.n")):
            yield Mark(mod=int(number) % 4)
            yield {"page": int(number)}
        for url in response.links():
            yield response.follow(url)


class MissingKeySpider(PerTypeSpider):
    """Uses the `odd` type for dicts, whose key field the items lack."""

    name = "missing_key"
    item_type = "odd"


async def test_dedupe_items_by_can_name_fields_per_item_type(
    follow_site: BaseTestServer, database: Target
) -> None:
    stats = await crawl(
        with_start_urls(PerTypeSpider, [start(follow_site)]), db=database, settings=FAST
    )

    assert stats["items_by_type"] == {"item": 60, "mark": 4}
    assert stats["items_dropped"] == {"duplicate": 56}


async def test_an_item_without_its_key_field_is_an_item_error(
    follow_site: BaseTestServer, database: Target
) -> None:
    spider = with_start_urls(MissingKeySpider, [start(follow_site)])
    stats = await crawl(spider, db=database, settings=FAST)

    assert stats["items_by_type"] == {"mark": 4}
    assert stats["items_dropped"] == {"duplicate": 56, "invalid": 60}
    assert rows(database, "SELECT DISTINCT item_type, field, message FROM item_errors") == [
        ("odd", "missing", "de-duplication field(s) missing: missing")
    ]


def test_the_summary_shows_dropped_items_by_reason() -> None:
    summary = {
        "pages": 5, "items": 3, "items_by_type": {"book": 3},
        "items_dropped": {"duplicate": 2, "invalid": 1}, "requests_done": 5,
        "requests_failed": 0, "requests_pending": 0, "skipped": {}, "errors": {},
        "statuses": {"200": 5}, "retries": 0, "bytes_received": 1000, "duration_s": 1.0,
        "pages_per_second": 5.0,
    }  # fmt: skip
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render_summary("books", "finished", summary))
    assert re.search(r"items dropped +│ 3 \(duplicate: 2, invalid: 1\)", console.export_text())


def test_dataclass_items_are_stored_as_json_of_their_fields_nested_ones_too() -> None:
    @dataclass
    class Part:
        name: str
        sizes: tuple[int, ...] = (1, 2)

    @dataclass
    class Kit:
        main: Part
        spares: list[Part]
        by_room: dict[str, list[Part]]

    kit = Kit(Part("a"), [Part("b", (3,))], {"hall": [Part("c")]})
    assert serialise_item(kit) == json.dumps(dataclasses.asdict(kit), separators=(",", ":"))
    with pytest.raises(TypeError, match="Object of type date is not JSON serializable"):
        serialise_item(Kit(Part("a"), [datetime.date(2026, 1, 1)], {}))  # type: ignore[list-item]
