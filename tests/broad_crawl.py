"""Crawls of many host names, all served on 127.0.0.1: a resolver that maps every name there,
and `python -m tests.broad_crawl ARGS`, the `crawler crawl` command (its `--processes`
workers too) with that resolver, following links to any host.

The command's spider is `AnyHostSpider`, which starts at `BROAD_START_URLS` (comma-separated)
and may visit every host; `BROAD_RECENT_HOSTS` sets how many idle hosts each process keeps in
memory (crawler.fetch.politeness `RECENT_HOSTS`), so that tests see hosts leave and come back.
"""

from __future__ import annotations

import functools
import os
import socket
import sys

from aiohttp.abc import AbstractResolver, ResolveResult

from tests.spiders import FollowAllSpider

__all__ = ["AnyHostSpider", "LoopbackResolver", "main"]


class LoopbackResolver(AbstractResolver):
    """Every name is 127.0.0.1 (the test server answers for all of them by Host)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


class AnyHostSpider(FollowAllSpider):
    """Follows every link, to any host, from `BROAD_START_URLS`."""

    name = "any_host"
    allowed_domains = ()
    start_urls = tuple(url for url in os.environ.get("BROAD_START_URLS", "").split(",") if url)


def main(argv: list[str]) -> None:
    """`crawler crawl tests.broad_crawl:AnyHostSpider ARGV` with the loopback resolver."""
    from crawler.cli.main import cli
    from crawler.engine import crawl as crawl_module
    from crawler.fetch import politeness
    from crawler.fetch.client import Fetcher

    crawl_module.Fetcher = functools.partial(Fetcher, resolver=LoopbackResolver())  # type: ignore[attr-defined,assignment]
    if recent := os.environ.get("BROAD_RECENT_HOSTS"):
        politeness.RECENT_HOSTS = int(recent)  # type: ignore[misc]
    cli.main(args=["crawl", "tests.broad_crawl:AnyHostSpider", *argv], prog_name="crawler")


if __name__ == "__main__":
    main(sys.argv[1:])
