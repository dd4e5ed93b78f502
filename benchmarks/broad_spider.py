"""Our spider for the broad-crawl benchmark (benchmarks/broad.py): follow every link, on any
host. The start URL comes from `BROAD_START_URL` (the benchmark's server picks its port)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from crawler import RequestBatch, Response, Spider


class BroadSpider(Spider):
    """Follows every link of every page; every host is allowed."""

    name = "broad"
    start_urls = (os.environ.get("BROAD_START_URL", "http://h0.broad.test:8000/"),)

    async def parse(self, response: Response) -> AsyncIterator[RequestBatch]:
        """Requests for every link on the page (one `follow_all()`)."""
        yield response.follow_all()
