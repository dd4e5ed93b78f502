"""What a spider yields is what `crawler export -f jsonl` and `-f json` give back.

For every field type items support (str, int, float, bool, None, lists, dicts, nested
dataclasses, Optional of those, tuples, unions, literals, Any), the value and its JSON type
survive a real crawl of a local site and the export command run as a subprocess: a bool stays
`true`, an integral float stays `2.0`, int64 extremes stay ints, nested structures keep their
shape and key order, None is `null`. The example tests take one crawl for every type; the
property test (Hypothesis, derandomized: the profile in tests/conftest.py sets how many
examples) yields up to 30 generated items per crawl and runs the export in this process. CSV spells
each type as README.md says, checked on one row.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import math
import re
import shutil
import sqlite3
import typing
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from hypothesis import given, note
from hypothesis import strategies as st

from crawler import Response, Spider, crawl
from crawler.cli.main import cli
from tests.conftest import RunCli, run_crawler, scalar
from tests.sites import html_page

FAST: Final[dict[str, object]] = {
    "obey_robots": False,
    "autothrottle": False,
    "write_interval": 0.005,
    "progress_interval": 60.0,
    "blocking_warning": 0.0,
}
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


# --- The spider, the site and the comparison ----------------------------------------------


class YieldingSpider(Spider):
    """Yields the items it is given from the start page, in order."""

    name = "roundtrip"
    yields: ClassVar[Sequence[object]] = ()

    async def parse(self, response: Response) -> AsyncIterator[object]:
        for item in self.yields:
            yield item


def site() -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html_page("<p>items</p>"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


async def crawl_items(url: str, db: Path, items: Sequence[object]) -> None:
    """Crawl `url` into `db` (a new file) with a spider yielding `items`; every one is
    stored."""
    attrs = {
        "name": YieldingSpider.name,
        "start_urls": (url,),
        "allowed_domains": ("127.0.0.1",),
        "yields": tuple(items),
        "__module__": __name__,
    }
    spider = type("YieldingSpider", (YieldingSpider,), attrs)
    await crawl(spider, db=db, settings=FAST)
    refused = scalar(db, "SELECT group_concat(message, ' | ') FROM item_errors")
    assert refused is None, refused
    assert scalar(db, "SELECT count(*) FROM items") == len(items)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse JSON lines. Split on "\\n" only: a string value may hold U+2028 or U+0085, which
    `str.splitlines` would also split on."""
    return [json.loads(line) for line in text.split("\n") if line]


async def exported(db: Path, type_name: str) -> list[dict[str, Any]]:
    """The rows `crawler export -t TYPE` (a subprocess) gives, the same in `-f jsonl` and
    `-f json`."""
    as_jsonl, as_json = await asyncio.gather(
        run_crawler("export", str(db), "-t", type_name, "-f", "jsonl"),
        run_crawler("export", str(db), "-t", type_name, "-f", "json"),
    )
    for result in (as_jsonl, as_json):
        assert result.code == 0, result.stderr
    return same_records(as_jsonl.stdout, as_json.stdout)


def exported_in_process(db: Path, type_name: str) -> list[dict[str, Any]]:
    """`exported`, with the command run in this process (click's CliRunner): the same code
    from the command line's arguments on, without starting Python twice per example."""
    outputs: list[str] = []
    for fmt in ("jsonl", "json"):
        result = CliRunner().invoke(cli, ["export", str(db), "-t", type_name, "-f", fmt])
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
    return same_records(*outputs)


def same_records(jsonl: str, json_text: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines and a JSON export, which must be the same."""
    records = json_lines(jsonl)
    from_json: list[dict[str, Any]] = json.loads(json_text)
    assert_same(from_json, records, "json vs jsonl")
    return records


def json_form(value: object) -> object:
    """A yielded value as JSON holds it: dataclasses as objects, tuples as arrays."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_form(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [json_form(v) for v in value]
    if isinstance(value, dict):
        return {k: json_form(v) for k, v in value.items()}
    return value


def assert_same(actual: object, expected: object, where: str) -> None:
    """Equal values of the same JSON type, all the way down: 1 is not 1.0 nor true, -0.0 is
    not 0.0, and objects keep their key order."""
    assert type(actual) is type(expected), f"{where}: {actual!r} is not {expected!r}"
    if isinstance(actual, float) and isinstance(expected, float):
        same_sign = math.copysign(1.0, actual) == math.copysign(1.0, expected)
        assert actual == expected and same_sign, f"{where}: {actual!r} is not {expected!r}"
    elif isinstance(actual, list) and isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: {actual!r} is not {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(actual, dict) and isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key, value in expected.items():
            assert_same(actual[key], value, f"{where}[{key!r}]")
    else:
        assert actual == expected, f"{where}: {actual!r} is not {expected!r}"


# --- One example test per type -----------------------------------------------------------


@dataclass
class Leaf:
    name: str
    score: float | None = None


@dataclass
class Inner:
    flag: bool
    ratio: float
    count: int
    tags: list[str]
    leaf: Leaf | None = None


TYPE_CASES: Final[list[tuple[str, object, list[object]]]] = [
    (
        "str",
        str,
        ["", "plain", " padded ", "true", "12", "null", "a\x00b", 'é😀\u2028\x85\r\n\t"\\'],
    ),
    ("int", int, [0, 1, -1, 2**31, INT64_MAX, INT64_MIN]),
    ("float", float, [2.0, 0.0, -0.0, 0.1, -1.5e-7, 1e16, 1e308, 5e-324, 2.0**53 + 2]),
    ("bool", bool, [True, False]),
    ("none", None, [None]),
    ("list_of_int", list[int], [[], [1, INT64_MIN, INT64_MAX]]),
    ("list_of_float", list[float], [[1.0, 2.5, -0.0]]),
    ("list_of_bool", list[bool], [[True, False]]),
    ("list_of_str", list[str], [["a", "", "b\x00"]]),
    ("dict_of_float", dict[str, float], [{}, {"b": 1.0, "a": 0.5}]),
    (
        "dict_of_any",
        dict[str, Any],
        [{"t": True, "i": 1, "f": 1.0, "n": None, "l": [[], {}, [1.0, False]], "d": {"e": {}}}],
    ),
    ("dataclass", Inner, [Inner(True, 2.0, 3, ["x"]), Inner(False, -0.0, 0, [], Leaf("l", 1.0))]),
    ("list_of_dataclasses", list[Leaf], [[Leaf("a"), Leaf("b", 0.0)]]),
    ("optional_str", str | None, ["x", None]),
    ("optional_int", typing.Optional[int], [INT64_MAX, None]),  # noqa: UP045 (this spelling too)
    ("optional_float", float | None, [7.0, None]),
    ("optional_bool", bool | None, [True, False, None]),
    ("optional_list", list[int] | None, [[1], None]),
    ("optional_dict", dict[str, bool] | None, [{"on": True}, None]),
    ("optional_dataclass", Inner | None, [Inner(True, 0.5, -1, ["t"], Leaf("z")), None]),
    ("int_or_float", int | float, [3, 3.0, 3.5]),
    ("tuple", tuple[int, float, bool], [(1, 2.0, True)]),  # JSON has no tuples: an array
    ("literal", Literal["a", "b"], ["a", "b"]),
    ("any", Any, [True, 1, 1.0, None, "s", [1.0], {"k": False}]),
]


CASE_ITEMS: Final = max(len(values) for _, _, values in TYPE_CASES)
TypeCases = dataclasses.make_dataclass("TypeCases", [(case, hint) for case, hint, _ in TYPE_CASES])
"""A dataclass with one field per case, named after it: item k holds each case's value k
(its first value again once a case has fewer)."""


def case_value(case: str, k: int) -> object:
    values = next(values for name, _, values in TYPE_CASES if name == case)
    return values[k % len(values)]


@pytest.fixture(scope="module")
def cases_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One crawl whose page yields every case's values."""
    db = tmp_path_factory.mktemp("roundtrip") / "cases.db"
    items = [
        TypeCases(**{case: case_value(case, k) for case, _, _ in TYPE_CASES})
        for k in range(CASE_ITEMS)
    ]

    async def run() -> None:
        async with TestServer(site(), host="127.0.0.1") as server:
            await crawl_items(str(server.make_url("/")), db, items)

    asyncio.run(run())
    return db


@pytest.fixture(scope="module")
def cases_exported(cases_db: Path) -> list[dict[str, Any]]:
    return asyncio.run(exported(cases_db, "type_cases"))


@pytest.mark.parametrize("case", [case for case, _, _ in TYPE_CASES])
def test_each_field_type_comes_back_as_it_was_yielded(
    cases_exported: list[dict[str, Any]], case: str
) -> None:
    assert len(cases_exported) == CASE_ITEMS
    for k, record in enumerate(cases_exported):
        assert_same(record[case], json_form(case_value(case, k)), f"{case} #{k}")
        assert record["page_url"].endswith("/") and isinstance(record["item_id"], int)


async def test_a_row_written_by_hand_is_exported_from_its_columns(
    cases_db: Path, tmp_path: Path
) -> None:
    """A typed row with no item behind it (inserted with `query --write`) still exports:
    its columns are the only values there are, JSON columns decoded."""
    db = tmp_path / "copy.db"
    shutil.copyfile(cases_db, db)
    execute(
        db,
        "INSERT INTO type_cases (int, bool, dataclass, page_url, crawl_id, request_id, "
        'created_at) VALUES (42, 1, \'{"flag":true,"tags":["h"]}\', \'http://x/\', 1, 1, '
        "'now')",
    )
    *_, by_hand = await exported(db, "type_cases")
    assert (by_hand["int"], by_hand["bool"], by_hand["str"]) == (42, 1, None)
    assert by_hand["dataclass"] == {"flag": True, "tags": ["h"]}


def execute(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql)


# --- CSV --------------------------------------------------------------------------------


@dataclass
class Row:
    text: str
    empty: str
    count: int
    ratio: float
    whole: float
    flag: bool
    off: bool
    missing: int | None
    tags: list[str]
    scores: dict[str, float]
    leaf: Leaf
    maybe: Leaf | None


async def test_csv_spells_each_type_as_the_readme_says(tmp_path: Path, run_cli: RunCli) -> None:
    row = Row(
        text='say "hi", then\nleave',
        empty="",
        count=INT64_MIN,
        ratio=0.1,
        whole=2.0,
        flag=True,
        off=False,
        missing=None,
        tags=["a", "é"],
        scores={"x": 1.0},
        leaf=Leaf("n", None),
        maybe=None,
    )
    db = tmp_path / "csv.db"
    async with TestServer(site(), host="127.0.0.1") as server:
        await crawl_items(str(server.make_url("/")), db, [row])
    result = await run_cli("export", str(db), "-t", "row", "-f", "csv")
    assert result.code == 0, result.stderr
    (parsed,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {name: parsed[name] for name in (f.name for f in dataclasses.fields(Row))} == {
        "text": 'say "hi", then\nleave',
        "empty": "",  # an empty string and None are both an empty cell
        "count": "-9223372036854775808",
        "ratio": "0.1",
        "whole": "2.0",
        "flag": "true",
        "off": "false",
        "missing": "",
        "tags": '["a","é"]',
        "scores": '{"x":1.0}',
        "leaf": '{"name":"n","score":null}',
        "maybe": "",
    }
    assert re.fullmatch(r"\d+", parsed["item_id"])


# --- Property: generated items of every type ---------------------------------------------


@dataclass
class Everything:
    """A dataclass item with a field of every supported type."""

    index: int
    text: str
    count: int
    ratio: float
    flag: bool
    nothing: None
    maybe_text: str | None
    maybe_count: int | None
    maybe_ratio: float | None
    maybe_flag: bool | None
    counts: list[int]
    ratios: list[float]
    flags: list[bool]
    texts: list[str]
    by_name: dict[str, float]
    anything: dict[str, Any]
    values: list[Any]
    leaf: Leaf
    maybe_leaf: Leaf | None
    leaves: list[Leaf]
    number: int | float
    triple: tuple[int, float, bool]
    choice: Literal["a", "b"]


texts = st.text(st.characters(codec="utf-8"), max_size=12)  # any str but a lone surrogate
ints = st.integers(INT64_MIN, INT64_MAX)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
leaves = st.builds(Leaf, name=texts, score=st.none() | floats)
everything = st.builds(
    Everything,
    index=st.just(0),
    text=texts,
    count=ints,
    ratio=floats,
    flag=st.booleans(),
    nothing=st.none(),
    maybe_text=st.none() | texts,
    maybe_count=st.none() | ints,
    maybe_ratio=st.none() | floats,
    maybe_flag=st.none() | st.booleans(),
    counts=st.lists(ints, max_size=3),
    ratios=st.lists(floats, max_size=3),
    flags=st.lists(st.booleans(), max_size=3),
    texts=st.lists(texts, max_size=3),
    by_name=st.dictionaries(texts, floats, max_size=3),
    anything=st.dictionaries(texts, json_values, max_size=3),
    values=st.lists(json_values, max_size=3),
    leaf=leaves,
    maybe_leaf=st.none() | leaves,
    leaves=st.lists(leaves, max_size=2),
    number=ints | floats,
    triple=st.tuples(ints, floats, st.booleans()),
    choice=st.sampled_from(["a", "b"]),
)


@dataclass
class Harness:
    """One event loop and one local site for all the property test's crawls."""

    runner: asyncio.Runner
    url: str
    db: Path


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    runner = asyncio.Runner()
    server = TestServer(site(), host="127.0.0.1")
    runner.run(server.start_server())
    try:
        db = tmp_path_factory.mktemp("roundtrip_property") / "property.db"
        yield Harness(runner, str(server.make_url("/")), db)
    finally:
        runner.run(server.close())
        runner.close()


@given(items=st.lists(everything, min_size=1, max_size=30))
def test_any_items_come_back_from_export_as_they_were_yielded(
    harness: Harness, items: list[Everything]
) -> None:
    numbered = [dataclasses.replace(item, index=i) for i, item in enumerate(items)]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{harness.db}{suffix}").unlink(missing_ok=True)
    harness.runner.run(crawl_items(harness.url, harness.db, numbered))
    records = exported_in_process(harness.db, "everything")
    assert len(records) == len(numbered)
    for record, item in zip(records, numbered, strict=True):
        note(f"item {item.index}: {item!r}")
        expected = json_form(item)
        assert isinstance(expected, dict)
        assert_same({name: record[name] for name in expected}, expected, f"item {item.index}")
