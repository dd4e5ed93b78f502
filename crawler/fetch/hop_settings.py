"""What each request hop sends to its host under per-site settings (`Settings.for_host`):
the User-Agent and `headers` of that host beneath the request's own headers, its connect
timeout, and the request timeout of the request's host. A redirect to another host gets that
host's, so a token set for one site never leaves it.

With no per-site values and no crawl-wide `headers` (the common case), every answer is the
session's default and no host is looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import aiohttp
from multidict import CIMultiDict

from crawler.links import host_of
from crawler.settings import Settings

__all__ = ["HopSettings"]


@final
class HopSettings:
    """The per-host request arguments of one crawl (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        varies = settings.sets_per_host
        self._headers_vary = bool(settings.headers) or varies("headers") or varies("user_agent")
        self._timeouts_vary = varies("request_timeout") or varies("connect_timeout")

    def request_timeout(self, url: str) -> float:
        """Seconds an attempt at `url` may take (`request_timeout` of its host)."""
        if self._timeouts_vary:
            return self._settings.for_host(host_of(url)).request_timeout
        return self._settings.request_timeout

    def arguments(self, url: str, own: Mapping[str, str] | None) -> dict[str, Any]:
        """The `session.request` keyword arguments of one hop to `url`: `headers` (the
        host's under the request's `own`) and, when the host's differs, `timeout`."""
        if not (self._headers_vary or self._timeouts_vary):
            return {"headers": own}
        settings = self._settings.for_host(host_of(url))
        arguments: dict[str, Any] = {"headers": own}
        if settings.connect_timeout != self._settings.connect_timeout:
            arguments["timeout"] = aiohttp.ClientTimeout(
                total=None, sock_connect=settings.connect_timeout
            )
        if self._headers_vary:
            headers: CIMultiDict[str] = CIMultiDict(settings.headers)
            if settings.user_agent != self._settings.user_agent:
                headers["User-Agent"] = settings.user_agent
            headers.update(own or {})
            arguments["headers"] = headers
        return arguments
