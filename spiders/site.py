"""A generic whole-site crawler: start with `--start-url`, store every page and its links."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from crawler import RequestBatch, Response, Spider


class SiteSpider(Spider):
    """Follow every link on the start URLs' hosts; pages and links land in the database.

    Run it as `crawler crawl site --start-url https://example.com/`: the start URLs' hosts
    become its allowed domains, so it never leaves the site. Without one it has nothing to
    start from, and `crawler crawl site` refuses to run (exit code 2, no file created).
    """

    name = "site"

    async def parse(self, response: Response) -> AsyncIterator[RequestBatch | dict[str, Any]]:
        """Follow every link of the page; the engine records the page and its links."""
        yield response.follow_all()
