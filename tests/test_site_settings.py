"""Per-site settings: host patterns from config.toml's `[hosts."…"]` tables and a spider's
`host_settings`, the most specific pattern winning for each setting; each host of a real
crawl on loopback is fetched with its own concurrency, delay, headers, user agent and
robots.txt policy, as the servers see it."""

from __future__ import annotations

import asyncio
import re
import time
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import example, given
from hypothesis import strategies as st

from crawler import ConfigError, crawl, load_settings
from crawler.cli.common import with_start_urls
from crawler.host_rules import HostRule, HostSource, host_pattern, matching_values, pattern_matches
from crawler.settings import read_config_file
from crawler.spider.http import Request, Response
from tests.conftest import RunCli, rows
from tests.sites import html_page, tree_app
from tests.spiders import FollowAllSpider

ROOT: Final = Path(__file__).resolve().parent.parent

# -- patterns -------------------------------------------------------------------------------

LABEL: Final = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTS: Final = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


@given(host=HOSTS, suffix=st.lists(LABEL, min_size=1, max_size=4).map(".".join))
@example(host="example.com", suffix="example.com")
@example(host="badexample.com", suffix="example.com")
@example(host="a.example.com", suffix="example.com")
def test_a_wildcard_covers_the_hosts_below_its_domain_only(host: str, suffix: str) -> None:
    host_labels, suffix_labels = host.split("."), suffix.split(".")
    below = (
        len(host_labels) > len(suffix_labels)
        and host_labels[-len(suffix_labels) :] == suffix_labels
    )
    assert pattern_matches(host_pattern(f"*.{suffix}", "test"), host) is below
    assert pattern_matches(host_pattern(suffix, "test"), host) is (host == suffix)
    assert pattern_matches("*", host)


@given(host=HOSTS, wildcard=st.booleans())
def test_patterns_are_normalised_like_hosts(host: str, wildcard: bool) -> None:
    written = ("*." if wildcard else "") + host
    normal = host_pattern(written.upper(), "test")
    assert normal == written
    assert host_pattern(normal, "test") == normal


@given(text=st.text(max_size=40))
@example(text="")
@example(text="*.")
@example(text="*.*.example.com")
@example(text="*.127.0.0.1")
@example(text="example.com:8080")
@example(text="exa mple.com")
@example(text="a..b")
@example(text="-a.com")
def test_any_text_is_a_pattern_or_one_config_error(text: str) -> None:
    error = ""
    try:
        normal = host_pattern(text, "config.toml")
    except ConfigError as exc:
        error = str(exc)
    if error:
        assert "\n" not in error
        assert error.startswith("config.toml: host pattern ")
    else:
        assert normal == "*" or normal.isascii()
        assert host_pattern(normal, "config.toml") == normal


def test_addresses_and_international_names_are_written_as_hosts_are() -> None:
    assert host_pattern("[::1]", "t") == host_pattern("0:0::1", "t") == "::1"
    assert host_pattern("127.0.0.2", "t") == "127.0.0.2"
    assert host_pattern("*.Bücher.example", "t") == "*.xn--bcher-kva.example"


SOURCES: Final = st.sampled_from(typing.get_args(HostSource))
NAMES: Final = st.sampled_from(["delay_per_host", "user_agent", "obey_robots"])


@st.composite
def rules_for(draw: st.DrawFn, host: str) -> list[HostRule]:
    """Rules whose patterns are `*`, wildcards over the host's domains, the host itself
    and patterns of other hosts; each sets some settings to distinct values."""
    labels = host.split(".")
    candidates = ["*", host, "other.invalid", "*.other.invalid"]
    candidates += ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]
    chosen = draw(st.lists(st.tuples(st.sampled_from(candidates), SOURCES), unique=True))
    return [
        HostRule(pattern, {name: f"{pattern}/{source}" for name in draw(st.sets(NAMES))}, source)
        for pattern, source in chosen
    ]


@given(data=st.data(), host=st.lists(LABEL, min_size=1, max_size=4).map(".".join))
def test_the_most_specific_pattern_wins_for_each_setting(data: st.DataObject, host: str) -> None:
    rules = data.draw(rules_for(host))
    chosen = matching_values(rules, host)

    def rank(rule: HostRule) -> tuple[int, int, int]:
        kind = 0 if rule.pattern == "*" else 1 if rule.pattern.startswith("*.") else 2
        return (kind, len(rule.pattern.split(".")), rule.source == "spider")

    for name in ("delay_per_host", "user_agent", "obey_robots"):
        setting = [r for r in rules if name in r.values and pattern_matches(r.pattern, host)]
        if not setting:
            assert name not in chosen
            continue
        winner = max(setting, key=rank)
        assert chosen[name] == (winner.values[name], winner.label)


# -- loading ------------------------------------------------------------------------------


def test_layers_patterns_and_sources() -> None:
    settings = load_settings(
        config={
            "delay_per_host": 0.5,
            "hosts": {
                "*.example.com": {"delay_per_host": 2, "headers": {"Accept-Language": "de"}},
                "api.example.com": {"concurrency_per_host": 1},
            },
        },
        spider={"concurrency_per_host": 4},
        spider_hosts={"api.example.com": {"user_agent": "api-bot/1", "concurrency_per_host": 2}},
    ).settings
    api = settings.for_host("api.example.com")
    assert (api.delay_per_host, api.concurrency_per_host) == (2.0, 2)
    assert (api.user_agent, api.headers) == ("api-bot/1", {"Accept-Language": "de"})
    www = settings.for_host("www.example.com")
    assert (www.delay_per_host, www.concurrency_per_host, www.user_agent) == (
        2.0,
        4,
        settings.user_agent,
    )
    assert settings.for_host("example.com") == settings.for_host("elsewhere.org")
    assert settings.for_host("example.com").delay_per_host == 0.5
    chosen = matching_values(settings.host_rules, "api.example.com")
    assert chosen["concurrency_per_host"] == (2, "spider host_settings['api.example.com']")
    assert chosen["delay_per_host"] == (2.0, 'config.toml [hosts."*.example.com"]')


def test_without_rules_a_host_gets_the_crawl_settings_themselves() -> None:
    settings = load_settings(config={"delay_per_host": 1}).settings
    assert settings.for_host("example.com") is settings
    assert not settings.sets_per_host("delay_per_host")


def test_the_per_host_cache_is_bounded_and_answers_stay_the_same() -> None:
    settings = load_settings(config={"hosts": {"*.b.example": {"delay_per_host": 3}}}).settings
    first = settings.for_host("a.b.example")
    for n in range(5000):
        settings.for_host(f"h{n}.b.example")
    assert len(settings._per_host) <= 4096  # type: ignore[attr-defined]
    assert settings.for_host("a.b.example") == first
    assert settings.for_host("a.b.example").delay_per_host == 3.0


def test_config_file_hosts_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[crawler]\nconcurrency = 3\n\n[hosts."*.example.com"]\nrequest_timeout = 5\n'
        '[hosts."api.example.com".headers]\nAuthorization = "Bearer t"\n'
    )
    table = read_config_file(path)
    settings = load_settings(config=table).settings
    assert settings.concurrency == 3
    api = settings.for_host("api.example.com")
    assert (api.request_timeout, api.headers) == (5.0, {"Authorization": "Bearer t"})
    assert settings.for_host("www.example.com").headers == {}


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            {"config": {"hosts": {"exa mple.com": {"delay_per_host": 1}}}},
            "config.toml: host pattern 'exa mple.com' is not a host name",
        ),
        (
            {"spider_hosts": {"*.10.0.0.1": {"delay_per_host": 1}}},
            "spider: host pattern '*.10.0.0.1' puts a wildcard before an IP address",
        ),
        (
            {"config": {"hosts": {"example.com": {"max_depth": 2}}}},
            "config.toml [hosts.\"example.com\"]: 'max_depth' cannot be set per host",
        ),
        (
            {"spider_hosts": {"example.com": {"dealy_per_host": 2}}},
            "spider host_settings['example.com']: unknown setting 'dealy_per_host' "
            "(did you mean 'delay_per_host'?)",
        ),
        (
            {"config": {"hosts": {"example.com": {"concurrency_per_host": 0}}}},
            "config.toml [hosts.\"example.com\"]: setting 'concurrency_per_host' must be "
            "greater than 0",
        ),
        (
            {"config": {"hosts": {"example.com": {"obey_robots": "no"}}}},
            "config.toml [hosts.\"example.com\"]: setting 'obey_robots' must be bool",
        ),
        (
            {"config": {"hosts": {"example.com": {"headers": {"X-A": "1\r\nX-B: 2"}}}}},
            "config.toml [hosts.\"example.com\"]: setting 'headers': the value of 'X-A' must be",
        ),
        (
            {"config": {"hosts": {"Example.com": {}, "example.com": {}}}},
            "config.toml [hosts.\"example.com\"] is given twice (as 'example.com')",
        ),
        (
            {"config": {"hosts": ["example.com"]}},
            "config.toml [hosts] must map host patterns to tables of settings",
        ),
        (
            {"spider_hosts": {"example.com": 3}},
            "spider host_settings: 'example.com' must be a table of settings, got 3",
        ),
        (
            {"overrides": {"headers": "{not json"}},
            "command line: setting 'headers' must be dict[str, str]",
        ),
    ],
)
def test_bad_host_settings_are_one_line(layers: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**layers)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_command_line_headers_are_a_json_object() -> None:
    settings = load_settings(overrides={"headers": '{"Accept-Language": "fr"}'}).settings
    assert settings.headers == {"Accept-Language": "fr"}


# -- the command line -------------------------------------------------------------------


class ApiSpider(FollowAllSpider):
    name = "api_spider"
    settings: ClassVar = {"concurrency_per_host": 4}
    host_settings: ClassVar = {
        "api.example.com": {"concurrency_per_host": 1, "user_agent": "api-bot/1"}
    }


async def test_settings_command_shows_what_applies_to_a_host(
    tmp_path: Path, run_cli: RunCli
) -> None:
    (tmp_path / "config.toml").write_text('[hosts."*.example.com"]\ndelay_per_host = 2.5\n')
    spider = "tests.test_site_settings:ApiSpider"
    here = {"cwd": tmp_path, "env": {"PYTHONPATH": str(ROOT)}}
    result = await run_cli("settings", spider, "--host", "API.example.com", **here)
    assert result.code == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "spider host_settings['api.example.com']" in lines["concurrency_per_host"]
    assert "'api-bot/1'" in lines["user_agent"]
    assert 'config.toml [hosts."*.example.com"]' in lines["delay_per_host"]
    assert "2.5" in lines["delay_per_host"]
    other = await run_cli("settings", spider, "--host", "https://example.org/", **here)
    lines = {line.split("│")[1].strip(): line for line in other.stdout.splitlines() if "│" in line}
    assert "spider" in lines["concurrency_per_host"] and "4" in lines["concurrency_per_host"]
    assert "default" in lines["delay_per_host"]
    listing = await run_cli("settings", spider, **here)
    assert "per-site settings" in listing.stdout and "*.example.com" in listing.stdout


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        ('[hosts."*.ex ample.com"]\ndelay_per_host = 1\n', [], "host pattern '*.ex ample.com'"),
        ('[hosts."example.com"]\nmax_pages = 1\n', [], "'max_pages' cannot be set per host"),
        ("", ["--host", "*.example.com"], "--host takes a host, not a pattern"),
        ("", ["--host", "a/b"], "--host: host pattern 'a/b' is not a host name"),
    ],
)
async def test_settings_command_refuses_bad_hosts_in_one_line(
    tmp_path: Path, run_cli: RunCli, config: str, args: list[str], message: str
) -> None:
    (tmp_path / "config.toml").write_text(config)
    result = await run_cli("settings", *args, cwd=tmp_path)
    assert result.code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- two hosts on loopback ------------------------------------------------------------------


@dataclass
class Seen:
    """What one server saw: (arrival, path, User-Agent, X-Site) and the most in flight."""

    requests: list[tuple[float, str, str, str]] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    def pages(self) -> list[tuple[float, str, str, str]]:
        return [r for r in self.requests if r[1].startswith("/p/")]


def site(seen: Seen, pages: int, robots: str, latency: float = 0.1) -> web.Application:
    """`/` links to `/p/0` … `/p/{pages-1}`; each page takes `latency` seconds; every request
    logged."""

    async def handle(request: web.Request) -> web.Response:
        headers = request.headers
        seen.requests.append(
            (time.monotonic(), request.path, headers["User-Agent"], headers.get("X-Site", ""))
        )
        if request.path == "/robots.txt":
            return web.Response(text=robots, content_type="text/plain")
        seen.active += 1
        seen.peak = max(seen.peak, seen.active)
        try:
            if request.path == "/":
                links = "".join(f'<a href="/p/{n}">{n}</a>' for n in range(pages))
                return web.Response(text=html_page(links), content_type="text/html")
            await asyncio.sleep(latency)
            return web.Response(text=html_page("<p>page</p>"), content_type="text/html")
        finally:
            seen.active -= 1

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


ROBOTS: Final = "User-agent: one\nDisallow: /p/1\n\nUser-agent: *\nDisallow: /\n"
"""Host one's crawler (user agent one/1.0) may fetch all but /p/1; anyone else nothing."""


class TwoSitesSpider(FollowAllSpider):
    name = "two_sites"
    host_settings: ClassVar = {
        "127.0.0.2": {
            "concurrency_per_host": 4,
            "user_agent": "two/2.0",
            "headers": {"X-Site": "two"},
            "obey_robots": False,
        }
    }


Sites = tuple[Seen, Seen, Seen, list[str]]


@pytest.fixture
async def three_sites() -> AsyncIterator[Sites]:
    one, two, three = Seen(), Seen(), Seen()
    async with (
        TestServer(site(one, 8, ROBOTS), host="127.0.0.1") as first,
        TestServer(site(two, 12, ROBOTS), host="127.0.0.2") as second,
        TestServer(site(three, 6, ROBOTS, latency=0.01), host="127.0.0.3") as third,
    ):
        yield one, two, three, [str(s.make_url("/")) for s in (first, second, third)]


async def test_each_host_gets_its_own_settings(tmp_path: Path, three_sites: Sites) -> None:
    """Crawl-wide: at most 2 in flight per host, no delay. 127.0.0.1 (config.toml): 1 in
    flight, its own user agent and header; 127.0.0.2 (the spider's): 4 in flight, robots.txt
    ignored; 127.0.0.3 (config.toml): 0.15 s between requests; `*` gives the rest a header."""
    one, two, three, starts = three_sites
    spider = type("Spider", (TwoSitesSpider,), {"name": "two_sites", "start_urls": starts})
    config = {
        "concurrency_per_host": 2,
        "autothrottle": False,
        "progress_interval": 60.0,
        "hosts": {
            "127.0.0.1": {
                "concurrency_per_host": 1,
                "user_agent": "one/1.0",
                "headers": {"X-Site": "one"},
            },
            "127.0.0.3": {"delay_per_host": 0.15},
            "*": {"headers": {"X-Site": "any"}},
        },
    }
    db = tmp_path / "sites.db"
    await crawl(spider, db=db, config=config)

    assert {r[1] for r in one.pages()} == {f"/p/{n}" for n in range(8)} - {"/p/1"}
    assert {(r[2], r[3]) for r in one.requests} == {("one/1.0", "one")}
    assert one.peak == 1  # below the crawl's concurrency_per_host

    assert {r[1] for r in two.requests} == {"/", *(f"/p/{n}" for n in range(12))}
    assert {(r[2], r[3]) for r in two.requests} == {("two/2.0", "two")}
    assert 2 < two.peak <= 4  # above the crawl's concurrency_per_host, within the host's

    # robots.txt disallows everything to any agent but "one": only robots.txt was fetched
    assert [(r[1], r[3]) for r in three.requests] == [("/robots.txt", "any")]
    assert rows(db, "SELECT reason FROM requests WHERE url LIKE '%127.0.0.1%/p/1'") == [("robots",)]
    stored = rows(db, "SELECT settings FROM crawls")[0][0]
    assert '"127.0.0.2"' in stored and '"source": "spider"' in stored


async def test_a_host_delay_spaces_what_that_host_receives(
    tmp_path: Path, three_sites: Sites
) -> None:
    _, two, three, starts = three_sites
    spider = type("Spider", (FollowAllSpider,), {"name": "delays", "start_urls": starts})
    config = {
        "autothrottle": False,
        "obey_robots": False,
        "progress_interval": 60.0,
        "hosts": {"127.0.0.3": {"delay_per_host": 0.15}},
    }
    await crawl(spider, db=tmp_path / "delays.db", config=config)
    arrivals = [r[0] for r in three.requests]
    assert len(arrivals) == 7  # the index and 6 pages of 10 ms each
    # on average (the servers share the crawl's event loop, so one arrival may be seen late)
    assert (arrivals[-1] - arrivals[0]) / 6 >= 0.135
    fast = [r[0] for r in two.requests]
    assert (fast[-1] - fast[0]) / (len(fast) - 1) < 0.135  # the other hosts: no delay


async def test_a_redirect_gets_the_headers_of_the_host_it_goes_to(tmp_path: Path) -> None:
    """A token set for one host is not sent where that host redirects to."""
    seen = Seen()

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.2:{request.url.port}/landing")

    async def landing(request: web.Request) -> web.Response:
        seen.requests.append((0.0, request.path, request.headers["User-Agent"], ""))
        assert "Authorization" not in request.headers
        return web.Response(text=html_page("<p>ok</p>"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/away", away)
    app.router.add_get("/landing", landing)
    async with TestServer(app, host="127.0.0.1") as server:
        second = TestServer(app, host="127.0.0.2", port=server.port)
        async with second:

            class Redirected(FollowAllSpider):
                name = "redirected"
                start_urls: ClassVar = [str(server.make_url("/away"))]
                host_settings: ClassVar = {
                    "127.0.0.1": {"headers": {"Authorization": "Bearer secret"}},
                    "127.0.0.2": {"user_agent": "second/1"},
                }

                async def parse(self, response: Response) -> AsyncIterator[Request]:
                    return
                    yield

            await crawl(
                Redirected,
                db=tmp_path / "r.db",
                settings={"obey_robots": False, "progress_interval": 60.0},
            )
    assert [(path, agent) for _, path, agent, _ in seen.requests] == [("/landing", "second/1")]


def test_the_readme_config_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.DOTALL) if "[hosts." in b]
    path = tmp_path / "config.toml"
    path.write_text(block)
    settings = load_settings(config=read_config_file(path)).settings
    api = settings.for_host("api.example.com")
    assert (api.concurrency_per_host, api.delay_per_host, api.request_timeout) == (1, 1.0, 20.0)
    assert api.headers == {"Authorization": "Bearer …"}
    assert settings.for_host("www.example.com").headers == {"Accept-Language": "de"}
    assert settings.for_host("example.com").headers == {}


async def test_page_caps_and_timeouts_per_host(tmp_path: Path) -> None:
    """127.0.0.2 gets a page budget of 5, 127.0.0.3 a timeout its slow pages miss (by far);
    127.0.0.1, slow too, is crawled whole."""
    async with (
        TestServer(tree_app(20, 0.3), host="127.0.0.1") as first,
        TestServer(tree_app(20), host="127.0.0.2") as second,
        TestServer(tree_app(20, 1.0), host="127.0.0.3") as third,
    ):
        starts = [str(server.make_url("/p/0")) for server in (first, second, third)]
        spider = with_start_urls(FollowAllSpider, starts)
        config = {
            "hosts": {
                "127.0.0.2": {"max_pages_per_host": 5},
                "127.0.0.3": {"request_timeout": 0.1},
            },
            "max_retries": 0,
            "obey_robots": False,
            "progress_interval": 60.0,
        }
        db = tmp_path / "caps.db"
        await crawl(spider, db=db, config=config)
    by_host = rows(
        db,
        "SELECT host, state, coalesce(reason, ''), count(*) FROM requests "
        "GROUP BY host, state, reason ORDER BY host, state",
    )
    assert by_host == [
        ("127.0.0.1", "done", "", 20),
        ("127.0.0.2", "done", "", 5),
        ("127.0.0.2", "skipped", "max_pages_per_host", 6),  # /p/5 … /p/10
        ("127.0.0.3", "failed", "timeout: request timed out", 1),
    ]


async def test_refresh_after_per_host(tmp_path: Path) -> None:
    """A second run re-fetches only the host whose pattern sets `refresh_after`."""
    async with (
        TestServer(tree_app(6), host="127.0.0.1") as first,
        TestServer(tree_app(6), host="127.0.0.2") as second,
    ):
        starts = [str(first.make_url("/p/0")), str(second.make_url("/p/0"))]
        spider = with_start_urls(FollowAllSpider, starts)
        db = tmp_path / "daily.db"
        config: dict[str, object] = {"obey_robots": False, "progress_interval": 60.0}
        await crawl(spider, db=db, config=config)
        await asyncio.sleep(2.05)  # re-crawl cutoffs are whole seconds
        config["hosts"] = {"127.0.0.2": {"refresh_after": "1s"}}
        stats = await crawl(spider, db=db, config=config)
    assert stats["requeued"] == 6
    fetched = rows(
        db,
        "SELECT r.host, count(*) FROM fetches AS f JOIN requests AS r ON r.id = f.request_id "
        "GROUP BY r.host ORDER BY r.host",
    )
    assert fetched == [("127.0.0.1", 6), ("127.0.0.2", 12)]
