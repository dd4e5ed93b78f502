"""No fetch of internal addresses unless the crawl is local (crawler.fetch.addresses).

Nothing here sends a packet beyond loopback. Names are answered by `FakeResolver`, never by
DNS. The production guard (`GuardedConnector`) checks those answers; a test-only layer after
it (`loopback_only`) turns the one public address the tests use into 127.0.0.1, where the
test server listens, and raises for any other address outside 127.0.0.0/8: when the guard
hands its answers on, and again just before a socket would connect.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from aiohappyeyeballs import AddrInfoType
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_proto import ResponseHandler
from aiohttp.test_utils import TestServer
from aiohttp.tracing import Trace
from hypothesis import given
from hypothesis import strategies as st

import crawler.engine.crawl
from crawler import Item, Request, Response, crawl
from crawler.fetch.addresses import (
    AddressClass,
    GuardedConnector,
    classify,
    classify_text,
    start_urls_of,
)
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Failed, Fetched
from crawler.settings import load_settings
from crawler.spider.sitemaps import SitemapSpider
from tests.conftest import rows
from tests.sites import html_page
from tests.spiders import FollowAllSpider

PUBLIC = "93.184.216.34"
"""What `www.shop.test` resolves to: public, so the guard lets it through; the test layer
then connects to 127.0.0.1 instead."""
LOOPBACK = IPv4Network("127.0.0.0/8")
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_interval": 60.0, "max_retries": 1}
VISITS = web.AppKey("visits", list[str])
LAN_PORT = web.AppKey("lan_port", int)
NAMES: dict[str, str | Sequence[str]] = {
    "www.shop.test": PUBLIC,
    "meta.shop.test": "169.254.169.254",
    "intra.shop.test": "10.0.0.7",
    "mapped.shop.test": "::ffff:10.0.0.7",
    "lan.shop.test": "127.0.0.2",
    "rebind.shop.test": [PUBLIC, "10.0.0.7"],
    "slow.shop.test": PUBLIC,
}
SLOW = {"slow.shop.test"}
"""Names whose resolution takes 30 seconds."""


# --- the test layers: a fake DNS, and nothing outside loopback ----------------------------


class FakeResolver(AbstractResolver):
    """Answers names from a table; a list of answers is used one call at a time, the last
    one repeating (DNS rebinding). An unknown name fails as in DNS, without asking DNS."""

    def __init__(self, names: Mapping[str, str | Sequence[str]]) -> None:
        self.names = dict(names)
        self.calls: Counter[str] = Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls[host] += 1
        if host in SLOW:
            await asyncio.sleep(30)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: unknown to the test resolver")
        answers = self.names[host]
        if not isinstance(answers, str):
            answers = answers[min(self.calls[host], len(answers)) - 1]
        family = socket.AF_INET6 if ":" in answers else socket.AF_INET
        return [
            ResolveResult(hostname=host, host=answers, port=port, family=family, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


class OutsideLoopback(Exception):
    """The guard let an address outside 127.0.0.0/8 through; the test layer stops it."""


@dataclass
class Network:
    """What the test layer saw: guarded resolutions (one per new connection or early check),
    the connectors made, and every address outside loopback that got past the guard."""

    resolutions: int = 0
    outside: list[str] = field(default_factory=list)
    connectors: list[GuardedConnector] = field(default_factory=list)

    def loopback(self, address: str) -> str:
        if ipaddress.ip_address(address.partition("%")[0]) not in LOOPBACK:
            self.outside.append(address)
            raise OutsideLoopback(address)
        return address


def loopback_only(network: Network) -> type[GuardedConnector]:
    """The production connector with the test layer after its guard (see the module doc)."""

    class LoopbackOnly(GuardedConnector):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            network.connectors.append(self)

        async def _resolve_host(
            self, host: str, port: int, traces: Sequence[Trace] | None = None
        ) -> list[ResolveResult]:
            answers = await super()._resolve_host(host, port, traces=traces)  # the guard
            network.resolutions += 1
            return [
                {
                    **answer,
                    "host": network.loopback(
                        "127.0.0.1" if answer["host"] == PUBLIC else answer["host"]
                    ),
                    "family": socket.AF_INET,
                }
                for answer in answers
            ]

        async def _wrap_create_connection(
            self, *args: Any, addr_infos: list[AddrInfoType], **kwargs: Any
        ) -> tuple[Any, ResponseHandler]:
            for info in addr_infos:
                network.loopback(str(info[4][0]))
            return await super()._wrap_create_connection(*args, addr_infos=addr_infos, **kwargs)

    return LoopbackOnly


@pytest.fixture
def network() -> Iterator[Network]:
    network = Network()
    yield network
    assert network.outside == []


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(NAMES)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch, network: Network, resolver: FakeResolver) -> None:
    """The crawls of this test connect through the fake resolver and the test layer."""
    fetcher = functools.partial(Fetcher, resolver=resolver, connector_class=loopback_only(network))
    monkeypatch.setattr(crawler.engine.crawl, "Fetcher", fetcher)


# --- the sites ------------------------------------------------------------------------------


def shop_app() -> web.Application:
    """www.shop.test on 127.0.0.1. `/` links to internal hosts of every kind, `/lan` only to
    lan.shop.test, `/tree/n` to `/tree/2n+1` and `/tree/2n+2` below 40. Visits are recorded
    as host and path."""
    app = web.Application()
    app[VISITS] = []

    def page(*links: str) -> web.Response:
        body = "<p class='n'>1</p>" + "".join(f'<a href="{link}">{link}</a>' for link in links)
        return web.Response(text=html_page(body), content_type="text/html")

    async def index(request: web.Request) -> web.Response:
        app[VISITS].append(f"{request.url.host}/")
        port = request.url.port
        return page(
            f"http://meta.shop.test:{port}/latest/meta-data/",
            f"http://intra.shop.test:{port}/admin",
            f"http://10.0.0.7:{port}/",
            f"http://mapped.shop.test:{port}/",
            f"http://[::ffff:169.254.169.254]:{port}/",
            f"http://lan.shop.test:{app[LAN_PORT]}/",
            "/hop",
            "/plain",
        )

    async def other(request: web.Request) -> web.Response:
        app[VISITS].append(f"{request.url.host}{request.path}")
        if request.path == "/hop":
            raise web.HTTPFound(f"http://intra.shop.test:{request.url.port}/secret")
        if request.path == "/lan":
            return page(f"http://lan.shop.test:{app[LAN_PORT]}/")
        if request.path == "/local":  # for a crawl started on 127.0.0.1
            return page(
                f"http://lan.shop.test:{app[LAN_PORT]}/",
                f"http://meta.shop.test:{request.url.port}/latest/meta-data/",
            )
        if request.path.startswith("/tree/"):
            n = int(request.path.rsplit("/", 1)[1])
            return page(*(f"/tree/{m}" for m in (2 * n + 1, 2 * n + 2) if m < 40))
        if request.path == "/close":  # no keep-alive: the next request needs a new connection
            response = page()
            response.force_close()
            return response
        return page()

    app.router.add_get("/", index)
    app.router.add_get("/{path:.+}", other)
    return app


def lan_app() -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html_page("<p class='n'>2</p>"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


@dataclass
class Shop:
    server: TestServer
    """www.shop.test, on 127.0.0.1."""
    lan: TestServer
    """lan.shop.test, on 127.0.0.2: an internal host that a crawl may be allowed to reach."""

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.server.port}{path}"

    @property
    def lan_url(self) -> str:
        return f"http://lan.shop.test:{self.lan.port}/"

    @property
    def visits(self) -> list[str]:
        return self.server.app[VISITS]


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    lan = TestServer(lan_app(), host="127.0.0.2")
    async with lan:
        app = shop_app()
        assert lan.port is not None
        app[LAN_PORT] = lan.port
        server = TestServer(app, host="127.0.0.1")
        async with server:
            yield Shop(server, lan)


def spider_from(url: str) -> type[FollowAllSpider]:
    """A spider that starts at `url` and follows links to any host, as a broad crawl does."""
    return type("AnyHost", (FollowAllSpider,), {"name": "any_host", "start_urls": [url]})


def states(db: Path) -> dict[str, tuple[str, str | None]]:
    requests = rows(db, "SELECT url, state, reason FROM requests")
    return {url: (state, reason) for url, state, reason in requests}


# --- crawls ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("guarded")
async def test_a_crawl_started_on_a_public_host_refuses_every_internal_address(
    shop: Shop, db_path: Path
) -> None:
    await crawl(spider_from(shop.url("www.shop.test")), db=db_path, settings=FAST)
    port = shop.server.port
    refused = {
        shop.url("meta.shop.test", "/latest/meta-data/"): (
            "meta.shop.test resolves to 169.254.169.254, a link-local address"
        ),
        shop.url("intra.shop.test", "/admin"): (
            "intra.shop.test resolves to 10.0.0.7, a private address"
        ),
        shop.url("10.0.0.7"): "10.0.0.7 is a private address",
        shop.url("mapped.shop.test"): (
            "mapped.shop.test resolves to ::ffff:10.0.0.7, a private address"
        ),
        f"http://[::ffff:a9fe:a9fe]:{port}/": "::ffff:a9fe:a9fe is a link-local address",
        shop.lan_url: "lan.shop.test resolves to 127.0.0.2, a loopback address",
        shop.url("www.shop.test", "/hop"): (
            f"redirect to http://intra.shop.test:{port}/secret: "
            "intra.shop.test resolves to 10.0.0.7, a private address"
        ),
    }
    got = states(db_path)
    for url, message in refused.items():
        assert got.pop(url) == ("failed", f"private_address: {message}"), url
    assert set(got.values()) == {("done", None)}  # `/` and `/plain`
    # one error each, on the first attempt: a refusal is not retried
    assert rows(db_path, "SELECT DISTINCT kind, attempt FROM errors") == [("private_address", 1)]
    assert rows(db_path, "SELECT count(*) FROM errors") == [(len(refused),)]
    # refused before robots.txt: no internal host was asked for one
    assert rows(db_path, "SELECT DISTINCT host FROM robots") == [("www.shop.test",)]
    assert sorted(shop.visits) == [
        "www.shop.test/",
        "www.shop.test/hop",
        "www.shop.test/plain",
        "www.shop.test/robots.txt",
    ]


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("allow", [False, True])
async def test_allow_private_addresses_lets_an_internal_name_through(
    shop: Shop, db_path: Path, allow: bool
) -> None:
    settings = {**FAST, "allow_private_addresses": allow}
    await crawl(spider_from(shop.url("www.shop.test", "/lan")), db=db_path, settings=settings)
    if allow:
        assert states(db_path)[shop.lan_url] == ("done", None)
    else:
        assert states(db_path)[shop.lan_url] == (
            "failed",
            "private_address: lan.shop.test resolves to 127.0.0.2, a loopback address",
        )


@pytest.mark.usefixtures("guarded")
async def test_a_crawl_started_on_loopback_may_fetch_loopback_but_nothing_else_internal(
    shop: Shop, db_path: Path
) -> None:
    await crawl(spider_from(shop.url("127.0.0.1", "/local")), db=db_path, settings=FAST)
    got = states(db_path)
    assert got[shop.lan_url] == ("done", None)  # a loopback name: the crawl's own class
    assert got[shop.url("meta.shop.test", "/latest/meta-data/")] == (
        "failed",
        "private_address: meta.shop.test resolves to 169.254.169.254, a link-local address",
    )


@pytest.mark.usefixtures("guarded")
async def test_the_check_runs_once_per_connection_not_per_request(
    shop: Shop, db_path: Path, network: Network, resolver: FakeResolver
) -> None:
    spider = spider_from(shop.url("www.shop.test", "/tree/0"))
    await crawl(spider, db=db_path, settings={**FAST, "concurrency_per_host": 4})
    assert rows(db_path, "SELECT count(*) FROM pages WHERE status = 200") == [(40,)]
    assert resolver.calls["www.shop.test"] == 1  # then aiohttp's DNS cache
    # one early check for the origin, one per pooled connection (at most 4 at once)
    assert network.resolutions <= 1 + 4


# --- the fetcher on its own -----------------------------------------------------------------


@pytest.mark.parametrize("start", ["www.shop.test", "rebind.shop.test"])
async def test_a_name_rebound_to_an_internal_address_is_refused_at_the_connection(
    shop: Shop, network: Network, resolver: FakeResolver, start: str
) -> None:
    """Also when the name is the crawl's own start host: its first answer set its trust."""
    settings = load_settings(overrides=FAST).settings
    fetcher = Fetcher(
        settings,
        lambda url: None,
        start_urls=[shop.url(start)],
        resolver=resolver,
        connector_class=loopback_only(network),
    )
    url = shop.url("rebind.shop.test", "/close")
    async with fetcher:
        assert await fetcher.address_refusal(Request(url)) is None  # public, the first time
        first = await fetcher.fetch(Request(url))
        assert isinstance(first, Fetched)
        (connector,) = network.connectors
        connector.clear_dns_cache()  # as when the answer's TTL runs out
        second = await fetcher.fetch(Request(url))
    assert isinstance(second, Failed)
    assert second.error.kind == "private_address"
    assert second.error.message == "rebind.shop.test resolves to 10.0.0.7, a private address"
    assert second.attempts == 1  # not retried
    assert shop.visits == ["rebind.shop.test/close"]


async def test_the_early_check_waits_for_dns_no_longer_than_connect_timeout(
    shop: Shop, network: Network, resolver: FakeResolver
) -> None:
    settings = load_settings(overrides={**FAST, "connect_timeout": 0.2}).settings
    fetcher = Fetcher(
        settings,
        lambda url: None,
        start_urls=[shop.url("www.shop.test")],
        resolver=resolver,
        connector_class=loopback_only(network),
    )
    async with fetcher:
        started = time.monotonic()
        assert await fetcher.address_refusal(Request(shop.url("slow.shop.test"))) is None
        assert time.monotonic() - started < 2  # the fetch reports the slow DNS, in its time


async def test_a_one_off_fetch_trusts_the_url_it_is_given_but_not_its_redirects(
    shop: Shop, network: Network, resolver: FakeResolver
) -> None:
    """`crawler parse URL` and `crawler record URL` fetch what the user typed, as curl would."""
    settings = load_settings(overrides=FAST).settings
    connector = loopback_only(network)
    async with Fetcher(
        settings, lambda url: None, resolver=resolver, connector_class=connector
    ) as fetcher:
        assert isinstance(await fetcher.fetch(Request(shop.lan_url)), Fetched)
        hop = await fetcher.fetch(Request(shop.url("www.shop.test", "/hop")))
    assert isinstance(hop, Failed)
    assert hop.error.kind == "private_address"


def test_start_urls_are_read_from_start_urls_and_sitemap_urls() -> None:
    class Shop(SitemapSpider):
        name = "shop"
        start_urls = ("http://www.shop.test/",)
        sitemap_urls = ("http://intra.shop.test/sitemap.xml",)

        async def parse(self, response: Response) -> AsyncIterator[Item]:
            yield {}

    assert start_urls_of(Shop()) == [
        "http://www.shop.test/",
        "http://intra.shop.test/sitemap.xml",
    ]


# --- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("127.255.0.9", AddressClass.LOOPBACK),
        ("::1", AddressClass.LOOPBACK),
        ("10.0.0.7", AddressClass.PRIVATE),
        ("172.31.255.255", AddressClass.PRIVATE),
        ("172.32.0.1", None),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("169.254.169.254", AddressClass.LINK_LOCAL),
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("fe80::1%eth0", AddressClass.LINK_LOCAL),
        ("100.64.0.1", AddressClass.SHARED),
        ("100.127.255.254", AddressClass.SHARED),
        ("100.128.0.1", None),
        ("fc00::1", AddressClass.UNIQUE_LOCAL),
        ("fd12:3456::1", AddressClass.UNIQUE_LOCAL),
        ("224.0.0.1", AddressClass.MULTICAST),
        ("ff02::1", AddressClass.MULTICAST),
        ("0.0.0.0", AddressClass.UNSPECIFIED),
        ("::", AddressClass.UNSPECIFIED),
        ("240.0.0.1", AddressClass.RESERVED),
        ("255.255.255.255", AddressClass.RESERVED),
        ("192.0.2.1", AddressClass.RESERVED),  # documentation
        ("198.18.0.1", AddressClass.RESERVED),  # benchmarking
        ("0.1.2.3", AddressClass.RESERVED),  # "this network"
        ("2001:db8::1", AddressClass.RESERVED),  # documentation
        ("fec0::1", AddressClass.RESERVED),  # site-local
        ("4000::1", AddressClass.RESERVED),  # unallocated
        ("2001::1", AddressClass.RESERVED),  # Teredo
        ("64:ff9b:1::a00:7", AddressClass.RESERVED),  # local-use NAT64
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK),  # IPv4-mapped
        ("::ffff:169.254.169.254", AddressClass.LINK_LOCAL),
        ("::ffff:93.184.216.34", None),
        ("2002:a00:7::1", AddressClass.PRIVATE),  # 6to4 of 10.0.0.7
        ("2002:a9fe:a9fe::", AddressClass.LINK_LOCAL),
        ("2002:5db8:d822::1", None),
        ("64:ff9b::10.0.0.7", AddressClass.PRIVATE),  # NAT64 of 10.0.0.7
        ("64:ff9b::7f00:1", AddressClass.LOOPBACK),
        ("64:ff9b::93.184.216.34", None),
        ("127.1", AddressClass.RESERVED),  # not an address: refused
        ("localhost", AddressClass.RESERVED),
    ],
)
def test_classify(address: str, expected: AddressClass | None) -> None:
    assert classify_text(address) == expected


_SPECIAL_V4: list[IPv4Network | IPv6Network] = [
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]
_SPECIAL_V6: list[IPv4Network | IPv6Network] = [
    IPv6Network(n)
    for n in (
        "::/96",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "4000::/3",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
]


def _in(networks: Sequence[IPv4Network | IPv6Network]) -> st.SearchStrategy[int]:
    """Integers inside one of `networks`, where special addresses are (and random ones rarely)."""
    ranges = [(int(n.network_address), int(n.broadcast_address)) for n in networks]
    return st.sampled_from(ranges).flatmap(lambda r: st.integers(*r))


ipv4 = st.one_of(st.integers(0, 2**32 - 1), _in(_SPECIAL_V4)).map(IPv4Address)
ipv6 = st.one_of(st.integers(0, 2**128 - 1), _in(_SPECIAL_V6)).map(IPv6Address)
mapped = ipv4.map(lambda v4: IPv6Address(f"::ffff:{v4}"))
sixtofour = st.tuples(ipv4, st.integers(0, 2**80 - 1)).map(
    lambda t: IPv6Address((0x2002 << 112) | (int(t[0]) << 80) | t[1])
)
nat64 = ipv4.map(lambda v4: IPv6Address(f"64:ff9b::{v4}"))

_RFC1918 = [IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


def unwrapped(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 one, else the address."""
    if isinstance(address, IPv6Address):
        if address in IPv6Network("64:ff9b::/96"):
            return IPv4Address(address.packed[-4:])
        return address.ipv4_mapped or address.sixtofour or address
    return address


def spelled_out(address: IPv4Address | IPv6Address) -> AddressClass | None:
    """The classification in terms of the ipaddress module's attributes."""
    address = unwrapped(address)
    if address.is_unspecified:
        return AddressClass.UNSPECIFIED
    if address.is_loopback:
        return AddressClass.LOOPBACK
    if address.is_link_local:
        return AddressClass.LINK_LOCAL
    if address.is_multicast:
        return AddressClass.MULTICAST
    if isinstance(address, IPv4Address) and any(address in n for n in _RFC1918):
        return AddressClass.PRIVATE
    if address in IPv4Network("100.64.0.0/10"):  # the one range ipaddress has no name for
        return AddressClass.SHARED
    if address in IPv6Network("fc00::/7"):
        return AddressClass.UNIQUE_LOCAL
    stricter = isinstance(address, IPv6Address) and (
        address.is_site_local or address in IPv6Network("64:ff9b:1::/48")
    )
    if stricter or address.is_reserved or not address.is_global:
        return AddressClass.RESERVED
    return None


@given(st.one_of(ipv4, ipv6, mapped, sixtofour, nat64))
def test_classify_agrees_with_the_ipaddress_module(address: IPv4Address | IPv6Address) -> None:
    assert classify(address) == spelled_out(address)
    assert classify_text(str(address)) == classify(address)
    if classify(address) is None:  # public: globally reachable unicast, whatever its form
        inner = unwrapped(address)
        assert inner.is_global
        assert not (inner.is_multicast or inner.is_reserved or inner.is_private)


@given(ipv4)
def test_an_ipv4_address_in_ipv6_clothes_is_classified_as_itself(v4: IPv4Address) -> None:
    expected = classify(v4)
    assert classify(IPv6Address(f"::ffff:{v4}")) == expected
    assert classify(IPv6Address(f"64:ff9b::{v4}")) == expected
    assert classify(IPv6Address((0x2002 << 112) | (int(v4) << 80) | 1)) == expected
