"""Cookies, bounded like the rest of per-host state (crawler.fetch.politeness).

aiohttp's cookie jar keeps every cookie it is given until it expires: in a broad crawl, one
or more per host that sets any, for good. `HostCookies` is that jar, holding only the
cookies of the hosts the crawl holds in memory. A host's cookies — those the jar would send
it: its own and those of the domains above it — go to the `hosts` table with its results
(`snapshot`, only when something changed), leave the jar when the host leaves memory
(`forget`), and come back with the host (`restore`), so a session cookie still works after
the host was forgotten, and in a resumed crawl.

Cookies of a parent domain (`Domain=example.com`, set by `www.example.com`) stay while any
host under it is in memory. Cookies set by the target of a redirect to another host
(`example.com` → `www.example.com`) belong to the host that was requested (`requesting`):
they are written to its row and leave the jar with it. Each crawler process has its own jar;
another one (`--processes`, workers on other machines) gets a host's cookies from its row
when it loads the host.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextvars import ContextVar
from http.cookies import Morsel
from typing import Final, final

import aiohttp
from aiohttp.typedefs import LooseCookies
from yarl import URL

from crawler.records import HostRecord

__all__ = ["HostCookies", "domains_of", "requesting"]

_NO_URL: Final = URL()
_CHANGED_LIMIT: Final = 100_000
"""Domains whose last change is remembered; beyond that the record starts again, and every
host in memory writes its cookies once more."""
_LINKED_LIMIT: Final = 16
"""Other hosts (redirect targets) whose cookies one host's row holds, at most."""
_requested: ContextVar[str | None] = ContextVar("requested", default=None)


def requesting(host: str) -> None:
    """The current task fetches a request of `host` now: cookies that responses set until
    the next call belong to it (the fetcher calls this as each request starts)."""
    _requested.set(host)


def domains_of(host: str) -> Iterator[str]:
    """`host` and the domains above it (`a.b.c` → `a.b.c`, `b.c`, `c`): the domains whose
    cookies the host is sent. An IP address is its only domain."""
    yield host
    if host.replace(".", "").isdigit() or ":" in host:
        return
    start = host.find(".")
    while start >= 0:
        yield host[start + 1 :]
        start = host.find(".", start + 1)


@final
class HostCookies(aiohttp.CookieJar):
    """The crawl's cookie jar, holding the cookies of the hosts in memory (module doc).

    Accepts cookies from IP addresses too (`unsafe`), as the crawler always did.
    """

    def __init__(self) -> None:
        super().__init__(unsafe=True)
        self._generation = 0
        self._changed: dict[str, int] = {}
        """Domain → generation of the last response that set cookies under it."""
        self._floor = 0
        """Generation when `_changed` was last emptied: a domain not in it changed then."""
        self._written: dict[str, int] = {}
        """Host in memory → generation its cookies were last written (or read back) at."""
        self._stored: set[str] = set()
        """Hosts in memory whose `hosts` row may hold cookies (so that "none" is written)."""
        self._linked: dict[str, set[str]] = {}
        """Host in memory → the other hosts whose cookies are its own (redirect targets)."""

    def update_cookies(self, cookies: LooseCookies, response_url: URL = _NO_URL) -> None:
        super().update_cookies(cookies, response_url)
        self._touch(response_url.raw_host)

    def update_cookies_from_headers(self, headers: Sequence[str], response_url: URL) -> None:
        super().update_cookies_from_headers(headers, response_url)
        if headers:
            self._touch(response_url.raw_host)

    def _touch(self, host: str | None) -> None:
        """A response of `host` set cookies: for itself or a domain above it."""
        if not host:
            return
        self._generation += 1
        if len(self._changed) >= _CHANGED_LIMIT:
            self._changed.clear()
            self._floor = self._generation
        for domain in domains_of(host):
            self._changed[domain] = self._generation
        owner = _requested.get()
        if owner is not None and owner != host:
            linked = self._linked.setdefault(owner, set())
            if len(linked) < _LINKED_LIMIT:
                linked.add(host)
            self._changed[owner] = self._generation

    def snapshot(self, host: str) -> str | None:
        """The cookies sent to `host`, as JSON for its `hosts` row, when they changed since
        they were last written or read; else None (the row keeps what it has)."""
        changed = max(self._changed.get(d, self._floor) for d in domains_of(host))
        if changed <= self._written.get(host, self._floor):
            return None
        self._written[host] = self._generation
        rows = list(self._rows(self._domains(host)))
        if not rows:
            if host not in self._stored:
                return None
            self._stored.discard(host)
            return "[]"
        self._stored.add(host)
        return json.dumps(rows, separators=(",", ":"))

    def _domains(self, host: str) -> set[str]:
        """The domains of the cookies that belong to `host`: its own, those above it, and
        those of the hosts its requests were redirected to."""
        domains = set(domains_of(host))
        for other in self._linked.get(host, ()):
            domains.update(domains_of(other))
        return domains

    def _rows(self, domains: set[str]) -> Iterator[list[object]]:
        """The jar's cookies of `domains` (any path), one list each (see `restore`)."""
        now = time.time()
        for (domain, path), cookies in self.cookies.items():
            if domain not in domains:
                continue
            for name, morsel in cookies.items():
                expires = self._expirations.get((domain, path, name))
                if expires is not None and expires <= now:
                    continue
                host_only = (domain, path, name) in self._host_only_cookies
                yield [
                    domain,
                    morsel["path"] or "/",
                    name,
                    morsel.value,
                    morsel.coded_value,
                    host_only,
                    expires,
                    bool(morsel["secure"]),
                    bool(morsel["httponly"]),
                    morsel["samesite"] or "",
                ]

    def with_cookies(self, record: HostRecord) -> HostRecord:
        """A host's snapshot with its cookies, when they changed since last written."""
        cookies = self.snapshot(record.host)
        return record if cookies is None else dataclasses.replace(record, cookies=cookies)

    def restore_hosts(self, records: Iterable[HostRecord]) -> None:
        """Hosts come back into memory: their stored cookies go back into the jar."""
        for record in records:
            self.restore(record.host, record.cookies)

    def restore(self, host: str, stored: str | None) -> None:
        """Put back the cookies of `host` read from its row (`snapshot`'s JSON); those of a
        domain the jar already holds a newer value of (another host in memory) are left."""
        if host in self._written:
            return  # in memory: the jar knows better
        self._written[host] = self._generation
        rows = json.loads(stored) if stored else []
        if rows:
            self._stored.add(host)
        own = set(domains_of(host))
        now = time.time()
        for row in rows:
            domain, path, name, value, coded, host_only, expires, secure, httponly, samesite = row
            linked = self._linked.setdefault(host, set())
            if domain not in own and len(linked) < _LINKED_LIMIT:
                linked.add(domain)  # a redirect target's: it leaves the jar with this host
            present = self.cookies.get((domain, path.rstrip("/")))
            if present is not None and name in present:
                continue  # a newer value, from another host under the same domain
            if expires is not None and expires <= now:
                continue
            morsel: Morsel[str] = Morsel()
            morsel.__setstate__({"key": name, "value": value, "coded_value": coded})  # type: ignore[attr-defined]
            morsel["path"] = path
            if not host_only:
                morsel["domain"] = domain
            if expires is not None:
                morsel["expires"] = email.utils.formatdate(expires, usegmt=True)
            morsel["secure"], morsel["httponly"], morsel["samesite"] = secure, httponly, samesite
            super().update_cookies({name: morsel}, URL.build(scheme="https", host=domain))

    def forget(self, hosts: Iterable[str]) -> None:
        """`hosts` left memory (their cookies are in their rows): drop their cookies, and those
        of the domains above them that no host still in memory is under."""
        domains: set[str] = set()
        for host in hosts:
            if self._written.pop(host, None) is not None:
                domains |= self._domains(host)
                self._linked.pop(host, None)
                self._stored.discard(host)
        if not domains or not self.cookies:
            return
        held = {domain for domain, _ in self.cookies if domain in domains}
        if not held:
            return
        kept = {d for host in self._written for d in self._domains(host) if d in held}
        doomed = held - kept
        if doomed:
            self.clear(lambda morsel: morsel["domain"] in doomed)

    @property
    def hosts(self) -> Collection[str]:
        """The hosts whose cookies the jar holds or has written (all in memory)."""
        return self._written.keys()
