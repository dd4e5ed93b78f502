"""An async-native web crawler whose results are a SQLite file you can query.

Write a `Spider`, run `crawler crawl NAME` (or `await crawl(MySpider, db="out.db")`), then
query the tables `crawls`, `requests`, `pages`, `links`, `items` and `errors`.
"""

from __future__ import annotations

from crawler.engine.crawl import Crawl, crawl
from crawler.errors import (
    ConfigError,
    ConnectError,
    CrawlerError,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    PrivateAddressError,
    ProtocolError,
    QueryError,
    RedirectError,
    ResponseTooLarge,
    SkipReason,
    SpiderError,
    SpiderNotFound,
    StopCrawl,
    StorageError,
)
from crawler.settings import Settings, load_settings
from crawler.spider.base import Spider, text_of
from crawler.spider.http import Callback, Item, Request, RequestBatch, Response
from crawler.spider.rules import CrawlSpider, Rule
from crawler.spider.sitemaps import SitemapSpider
from crawler.version import __version__

__all__ = [
    "Callback",
    "ConfigError",
    "ConnectError",
    "Crawl",
    "CrawlSpider",
    "CrawlerError",
    "FetchError",
    "FetchTimeout",
    "HTTPStatusError",
    "Item",
    "PrivateAddressError",
    "ProtocolError",
    "QueryError",
    "RedirectError",
    "Request",
    "RequestBatch",
    "Response",
    "ResponseTooLarge",
    "Rule",
    "Settings",
    "SitemapSpider",
    "SkipReason",
    "Spider",
    "SpiderError",
    "SpiderNotFound",
    "StopCrawl",
    "StorageError",
    "__version__",
    "crawl",
    "load_settings",
    "text_of",
]
