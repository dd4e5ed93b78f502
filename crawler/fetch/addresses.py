"""Which IP addresses a crawl may connect to: internal ones are refused unless the crawl is local.

A link, a redirect or a DNS answer must not turn the crawler against the network it runs in
(server-side request forgery: a cloud metadata service at 169.254.169.254, an admin page on
10.0.0.7, a database on localhost). `classify` names the class of an address that is not
publicly routable; `GuardedConnector` checks every address a new connection is about to use,
after DNS, so an answer that changes between an early check and the connection (DNS
rebinding) is caught where it matters. Literal IP hosts are checked the same way.

A class is allowed when the crawl's own start URLs resolve to it (`AddressPolicy`): a crawl
started on 127.0.0.1 may fetch loopback, one started on an intranet host may fetch private
addresses, one started on a public site may fetch neither. `allow_private_addresses` allows
everything.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
from collections.abc import Iterable, Sequence
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, Final, final

from aiohttp.abc import ResolveResult
from yarl import URL

from crawler.fetch.pool import BoundedPool

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

__all__ = [
    "AddressClass",
    "AddressPolicy",
    "AddressRefused",
    "GuardedConnector",
    "classify",
    "classify_text",
    "embedded_ipv4",
    "start_urls_of",
]


class AddressClass(StrEnum):
    """A kind of address that is not publicly routable; the value names it in messages."""

    UNSPECIFIED = "unspecified"
    """0.0.0.0 and :: (which connect to the local host)."""
    LOOPBACK = "loopback"
    """127.0.0.0/8 and ::1."""
    LINK_LOCAL = "link-local"
    """169.254.0.0/16 (where cloud metadata services answer) and fe80::/10."""
    MULTICAST = "multicast"
    """224.0.0.0/4 and ff00::/8."""
    PRIVATE = "private"
    """RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16."""
    SHARED = "carrier-grade NAT"
    """100.64.0.0/10 (RFC 6598), the far side of a carrier's NAT."""
    UNIQUE_LOCAL = "unique-local"
    """fc00::/7, IPv6's private addresses."""
    RESERVED = "reserved"
    """Everything else not globally reachable: documentation and benchmarking ranges,
    240.0.0.0/4, broadcast, unallocated IPv6, site-local fec0::/10, Teredo, local-use NAT64."""


_PRIVATE_V4: Final = tuple(
    IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_SHARED_V4: Final = IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL: Final = IPv6Network("fc00::/7")
_NAT64_LOCAL: Final = IPv6Network("64:ff9b:1::/48")
"""RFC 8215 local-use NAT64: translated by a local gateway into whatever it chooses."""
_MAPPED_PREFIX: Final = 0xFFFF << 32
_NAT64_PREFIX: Final = int(IPv6Address("64:ff9b::"))
_SIXTOFOUR_PREFIX: Final = 0x2002


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """Return the IPv4 address an IPv6 address stands for, if it is one of the forms that
    reach it: IPv4-mapped (::ffff:a.b.c.d, which the socket layer turns into an IPv4
    connection), 6to4 (2002:aabb:ccdd::/48) or well-known-prefix NAT64 (64:ff9b::a.b.c.d)."""
    value = int(address)
    if value >> 32 == 0xFFFF:
        return IPv4Address(value - _MAPPED_PREFIX)
    if value >> 112 == _SIXTOFOUR_PREFIX:
        return IPv4Address((value >> 80) & 0xFFFFFFFF)
    if value >> 32 == _NAT64_PREFIX >> 32:
        return IPv4Address(value & 0xFFFFFFFF)
    return None


def classify(address: IPv4Address | IPv6Address) -> AddressClass | None:
    """Return the class of an address that is not publicly routable, or None for a public one.

    IPv6 forms that carry an IPv4 address (see `embedded_ipv4`) are classified by that
    address. The reserved catch-all follows the `ipaddress` module's `is_global` and
    `is_reserved`, which track IANA's special-purpose registries.
    """
    if isinstance(address, IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return classify(embedded)
    if address.is_unspecified:
        return AddressClass.UNSPECIFIED
    if address.is_loopback:
        return AddressClass.LOOPBACK
    if address.is_link_local:
        return AddressClass.LINK_LOCAL
    if address.is_multicast:
        return AddressClass.MULTICAST
    if isinstance(address, IPv4Address):
        if any(address in network for network in _PRIVATE_V4):
            return AddressClass.PRIVATE
        if address in _SHARED_V4:
            return AddressClass.SHARED
    else:
        if address in _UNIQUE_LOCAL:
            return AddressClass.UNIQUE_LOCAL
        if address.is_site_local or address in _NAT64_LOCAL:
            return AddressClass.RESERVED
    if address.is_reserved or not address.is_global:
        return AddressClass.RESERVED
    return None


@functools.lru_cache(maxsize=4096)
def classify_text(text: str) -> AddressClass | None:
    """`classify` for an address as text (a resolver's answer); cached, since a crawl meets
    the same few addresses over and over. Text that is not an address is refused as reserved:
    the socket layer might read it as one (`127.1`)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return AddressClass.RESERVED
    return classify(address)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_key(host: str) -> str:
    return host.rstrip(".").lower()


def start_urls_of(spider: object) -> list[str]:
    """The URLs a spider says it starts from: `start_urls`, and a SitemapSpider's
    `sitemap_urls`. (Requests that an overridden `start_requests()` makes up elsewhere cannot
    be known before it runs.)"""
    urls = [*getattr(spider, "start_urls", ()), *getattr(spider, "sitemap_urls", ())]
    return [url for url in urls if isinstance(url, str)]


class AddressRefused(Exception):
    """A connection would have gone to an address the crawl may not reach."""

    def __init__(self, host: str, address: str, address_class: AddressClass) -> None:
        if _host_key(host) == address:
            message = f"{address} is a {address_class.value} address"
        else:
            message = f"{host} resolves to {address}, a {address_class.value} address"
        super().__init__(message)
        self.host = host
        self.address = address
        self.address_class = address_class


@final
class AddressPolicy:
    """The classes of internal address one crawl may connect to.

    A start URL's host is trusted at its first resolution: the classes of the addresses it
    resolves to then are allowed for every host. Later answers for it get no such trust, so
    a start host cannot rebind itself into a new class either. Literal IP start hosts are
    classified at once.
    """

    def __init__(self, *, allow_all: bool = False, start_urls: Iterable[str] = ()) -> None:
        self.allow_all = allow_all
        self.trusted: set[AddressClass] = set()
        self._unresolved_starts: dict[str, int] = {}
        """Start hosts (names) not resolved yet, with a port to resolve them on."""
        self._seen_starts: set[str] = set()
        self.add_start_urls(start_urls)

    def add_start_urls(self, urls: Iterable[str]) -> None:
        """Declare URLs the crawl starts from (see the class doc)."""
        for url in urls:
            try:
                parsed = URL(url)
                host, port = parsed.raw_host, parsed.port
            except (ValueError, TypeError, UnicodeError):
                continue
            if not host or (key := _host_key(host)) in self._seen_starts:
                continue
            self._seen_starts.add(key)
            if _is_ip_literal(key):
                if (address_class := classify_text(key)) is not None:
                    self.trusted.add(address_class)
            else:
                self._unresolved_starts[key] = port or 80

    def allows(self, answers: Sequence[ResolveResult]) -> bool:
        """Whether every answer is public or of a trusted class (the fast path)."""
        trusted = self.trusted
        for answer in answers:
            address_class = classify_text(answer["host"])
            if address_class is not None and address_class not in trusted:
                return False
        return True

    def resolved(self, host: str) -> None:
        """Note that `host` was resolved: if it is a start host, it gets no trust later."""
        if self._unresolved_starts:
            self._unresolved_starts.pop(_host_key(host), None)

    def trust_first_resolution(self, host: str, answers: Sequence[ResolveResult]) -> bool:
        """If `host` is a start host resolved for the first time, trust the classes of its
        answers and return True."""
        if self._unresolved_starts.pop(_host_key(host), None) is None:
            return False
        self.trust(answers)
        return True

    def trust(self, answers: Iterable[ResolveResult]) -> None:
        """Allow the classes of these answers, for every host."""
        for answer in answers:
            if (address_class := classify_text(answer["host"])) is not None:
                self.trusted.add(address_class)

    def unresolved_starts(self, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` start hosts not resolved yet, with the port to resolve them on."""
        return list(itertools.islice(self._unresolved_starts.items(), limit))

    def screen(self, host: str, answers: list[ResolveResult]) -> list[ResolveResult]:
        """Return the answers that may be connected to; raise `AddressRefused` if none."""
        allowed: list[ResolveResult] = []
        refused: list[tuple[str, AddressClass]] = []
        for answer in answers:
            address_class = classify_text(answer["host"])
            if address_class is None or address_class in self.trusted:
                allowed.append(answer)
            else:
                refused.append((answer["host"], address_class))
        if not allowed:
            raise AddressRefused(host, *refused[0])
        return allowed


_START_HOSTS_AT_ONCE: Final = 64
"""Start hosts resolved together when an internal answer needs their trust; the rest are
trusted as they are first resolved by the crawl itself."""


class GuardedConnector(BoundedPool):
    """aiohttp's TCP connector, refusing addresses its `AddressPolicy` does not allow.

    aiohttp calls `_resolve_host` for every new connection (literal IP hosts included, its DNS
    cache behind it) and connects only to the addresses it returns; pooled connections are
    reused without it. So the check runs once per new connection, on the addresses actually
    used, and costs a cached lookup per address when they are allowed.
    """

    def __init__(self, *, policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self._learning = asyncio.Lock()

    async def check(self, host: str, port: int) -> None:
        """Resolve `host` as a connection would (sharing aiohttp's DNS cache), raising
        `AddressRefused` if it is refused, or whatever resolving it raises."""
        await self._resolve_host(host, port)

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        answers = await super()._resolve_host(host, port, traces=traces)
        policy = self.policy
        if policy.allow_all:
            return answers
        if policy.allows(answers):
            policy.resolved(host)
            return answers
        if policy.trust_first_resolution(host, answers):
            return answers
        await self._learn_start_hosts()
        return policy.screen(host, answers)

    async def _learn_start_hosts(self) -> None:
        """Resolve start hosts the crawl has not resolved yet, to learn their classes before
        refusing an address that one of them might make the crawl's own."""
        async with self._learning:
            pending = self.policy.unresolved_starts(_START_HOSTS_AT_ONCE)
            if not pending:
                return
            results = await asyncio.gather(
                *(super(GuardedConnector, self)._resolve_host(h, p) for h, p in pending),
                return_exceptions=True,
            )
            for (host, _), result in zip(pending, results, strict=True):
                # An unknown start host teaches nothing; it is not asked again.
                answers = result if isinstance(result, list) else []
                self.policy.trust_first_resolution(host, answers)
