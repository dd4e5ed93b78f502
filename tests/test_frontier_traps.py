"""Spider-trap detection at the admission gate: the rules of `is_trap_url`, and their place
in `Frontier.admit` (after the other checks, recorded as skipped with reason `trap`)."""

from __future__ import annotations

import pytest

from crawler.errors import SkipReason
from crawler.frontier.gate import Frontier, is_trap_url
from crawler.records import Candidate, Skipped
from crawler.settings import load_settings
from crawler.spider.http import Request
from tests.spiders import FollowAllSpider

LONG_VALUE = "x" * 513


@pytest.mark.parametrize(
    "url",
    [
        "http://h/a/a/a/",
        "http://h/a/a/a",
        "http://h/trap/a/a/a/a/a/",
        "http://h/x/y/x/y/x/y",
        "http://h/x/y/x/y/x/y/",
        "http://h/shop/x/y/z/x/y/z/x/y/z/item",
        "http://h/1/2/3/4/5/6/7/8/1/2/3/4/5/6/7/8/1/2/3/4/5/6/7/8",
        "http://h/cal%20endar/cal%20endar/cal%20endar/",
        f"http://h/page?sid={LONG_VALUE}",
        f"http://h/page?a=1&sid={LONG_VALUE}&b=2",
    ],
)
def test_trap_shapes_are_recognised(url: str) -> None:
    assert is_trap_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://h/",
        "http://h/a/a/",  # twice is not a trap
        "http://h/2024/05/05/",  # an ordinary date
        "http://h/a/b/a/b/",
        "http://h/ab/ab/abc",  # the third is only a prefix of the segment
        "http://h/abc/bc/bc",
        "http://h/a//a//a/",  # not three in a row: the empty segments differ
        "http://h/x///",  # empty segments do not count
        "http://h/1/2/3/4/5/6/7/8/9/1/2/3/4/5/6/7/8/9/1/2/3/4/5/6/7/8/9",  # period over 8
        "http://h/search?q=a/a/a/a",  # only the path repeats count
        f"http://h/page?sid={'x' * 512}",  # long, but not over 512
        f"http://h/page?a={'x' * 300}&b={'y' * 300}",  # a long query of short values
        f"http://h/{'x' * 600}",  # a long path is max_url_length's business
    ],
)
def test_ordinary_urls_are_not_traps(url: str) -> None:
    assert not is_trap_url(url)


def test_a_trap_url_is_recorded_as_skipped_with_reason_trap() -> None:
    settings = load_settings(overrides={"max_depth": 5}).settings
    frontier = Frontier(settings, FollowAllSpider(), ["h"])
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []

    def admit(url: str, depth: int = 1) -> SkipReason | None:
        request = Request(url, depth=depth)
        return frontier.admit(request, parent_id=7, candidates=candidates, skipped=skipped)

    assert admit("http://h/a/a/") is None
    assert admit("http://h/a/a/a/") is SkipReason.TRAP
    assert admit("http://h/a/a/a/") is SkipReason.DUPLICATE  # counted, not stored twice
    assert admit("http://other/a/a/a/") is SkipReason.OFFSITE  # the earlier checks come first
    assert admit("http://h/b/b/b/", depth=6) is SkipReason.DEPTH
    assert [c.url for c in candidates] == ["http://h/a/a/"]
    assert [(s.url, s.reason, s.parent_id) for s in skipped] == [
        ("http://h/a/a/a/", SkipReason.TRAP, 7),
        ("http://other/a/a/a/", SkipReason.OFFSITE, 7),
        ("http://h/b/b/b/", SkipReason.DEPTH, 7),
    ]
