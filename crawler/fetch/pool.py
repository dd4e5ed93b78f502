"""The connection pool's bounds: how many idle keep-alive connections a crawl keeps open.

aiohttp's `limit` caps the connections in use (`concurrency`), not the idle ones: each host
keeps its idle connections for the keep-alive timeout (15 s) after its last request, one
file descriptor and a few KB each. A crawl of many hosts meets hundreds of new hosts a
second, so the idle pool (and the open descriptors) would grow with the rate of new hosts.
`BoundedPool` keeps idle connections for at most `idle_hosts` hosts, closing those of the
host idle longest, and `close_idle` closes a host's at once when the crawl has no more work
for it (crawler.fetch.politeness forgets it). Open connections therefore stay under
`limit + idle_hosts * limit_per_host`, whatever the number of hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ConnectionKey

__all__ = ["BoundedPool"]


class BoundedPool(aiohttp.TCPConnector):
    """A TCP connector keeping idle connections for at most `idle_hosts` hosts (see the
    module doc); by default as many as `limit`."""

    def __init__(self, *, idle_hosts: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.idle_hosts = max(1, idle_hosts if idle_hosts is not None else self.limit or 100)

    def idle_connections(self) -> int:
        """The number of idle connections in the pool."""
        return sum(len(conns) for conns in self._conns.values())

    def close_idle(self, hosts: Iterable[str]) -> None:
        """Close the idle connections to `hosts` (the crawl has no work left for them)."""
        gone = set(hosts)
        if not gone or not self._conns:
            return
        for key in [key for key in self._conns if key.host in gone]:
            self._close_key(key)

    def _release(
        self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False
    ) -> None:
        super()._release(key, protocol, should_close=should_close)
        conns = self._conns
        while len(conns) > self.idle_hosts:
            oldest = next(iter(conns))
            if oldest == key:
                break  # the only key: the host just released stays
            self._close_key(oldest)

    def _close_key(self, key: ConnectionKey) -> None:
        for protocol, _ in self._conns.pop(key, ()):
            protocol.close()
