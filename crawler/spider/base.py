"""The Spider base class users subclass, and the small helpers spiders use.

A spider says where a crawl starts (`start_urls` or `start_requests`), which hosts it may
visit (`allowed_domains`), and how to read each page: callbacks are `async def` generators
that take a `Response` and yield items (dicts or dataclass instances) and `Request`s.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from selectolax.lexbor import LexborNode

from crawler.errors import SpiderError
from crawler.spider.http import Callback, Item, Request, Response

__all__ = ["Spider", "callback_of", "dataclass_type_name", "item_type_name", "text_of"]


class Spider:
    """Base class of every spider.

    Subclasses set `name` (required, unique), `start_urls`, `allowed_domains` (hosts the crawl
    may visit, subdomains included; empty means any host) and `settings` (overrides of the
    defaults and of config.toml, below command-line flags), and define `parse`.

    Example:
        ```python
        class QuotesSpider(Spider):
            name = "quotes"
            start_urls = ["https://quotes.toscrape.com/"]
            allowed_domains = ["quotes.toscrape.com"]

            async def parse(self, response: Response) -> AsyncIterator[Item | Request]:
                for quote in response.css("div.quote"):
                    yield {"text": text_of(quote.css_first("span.text"))}
                if next_page := response.css_first("li.next a"):
                    yield response.follow(next_page)
        ```
    """

    name: ClassVar[str]
    start_urls: ClassVar[Sequence[str]] = ()
    allowed_domains: ClassVar[Sequence[str]] = ()
    settings: ClassVar[Mapping[str, object]] = {}
    host_settings: ClassVar[Mapping[str, Mapping[str, object]]] = {}
    """Per-site values of the per-host settings, by host pattern: `{"api.example.com":
    {"delay_per_host": 2.0}, "*.example.com": {"concurrency_per_host": 2}}`; the most
    specific matching pattern wins (see crawler.host_rules)."""
    item_type: ClassVar[str] = "item"
    """Type name recorded for dict items (dataclass items use their class name)."""
    any_content_callbacks: ClassVar[Sequence[str]] = ()
    """Names of callbacks that get responses of any content type (XML, gzip, JSON…); the
    others only get the `parse_content_types` setting's (HTML by default)."""
    item_types: ClassVar[Sequence[type]] = ()
    """Dataclasses this spider yields; their typed tables (`book` for `Book`) are created when
    the crawl starts, so queries work before the first item (see crawler.store.item_tables)."""
    dedupe_items_by: ClassVar[Sequence[str] | Mapping[str, Sequence[str]]] = ()
    """Fields whose values identify an item: `("upc",)` for every item type, or per type name
    (`{"book": ("upc",)}`). An item whose key was stored before, in this run or an earlier
    one, is dropped and counted. A spider may also define `async def process_item(self, item,
    response)`, returning the item (possibly changed) or None to drop it
    (see crawler.spider.items)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None and not inspect.isabstract(cls) and not _is_base(cls):
            raise SpiderError(f"spider class {cls.__qualname__} must set a `name`")
        if name is not None and (not isinstance(name, str) or not name):
            raise SpiderError(f"spider class {cls.__qualname__}: `name` must be a non-empty string")

    @classmethod
    def setting_layers(cls) -> dict[str, Any]:
        """This spider's layers for `load_settings`: `settings` and `host_settings`."""
        return {"spider": cls.settings, "spider_hosts": cls.host_settings}

    async def start_requests(self) -> AsyncIterator[Request]:
        """Yield the first requests of the crawl; by default one per `start_urls` entry."""
        for url in self.start_urls:
            yield Request(url)

    def parse(self, response: Response) -> AsyncIterator[Any]:
        """Parse a page: yield items and requests. Subclasses must define it."""
        raise NotImplementedError(f"{type(self).__name__} must define parse()")

    async def opened(self) -> None:
        """Called once before the first request; override to set up resources."""

    async def closed(self, reason: str) -> None:
        """Called once after the crawl ends, with why it ended (`finished`, `interrupted`…)."""


def _is_base(cls: type) -> bool:
    """Spider subclasses meant as bases (named *Spider in crawler.*) need no name."""
    return cls.__module__.startswith("crawler.")


def callback_of(spider: Spider, name: str) -> Callback:
    """Return the spider method called `name`, checking that it is an async generator.

    Raises:
        SpiderError: there is no such method, or it is not `async def … yield`.
    """
    method = getattr(spider, name, None)
    if method is None or not callable(method):
        raise SpiderError(f"spider {spider.name!r} has no callback named {name!r}")
    function = getattr(method, "__func__", method)
    if not inspect.isasyncgenfunction(function) and function is not Spider.parse:
        raise SpiderError(
            f"callback {type(spider).__name__}.{name} must be an async generator "
            "(async def with yield)"
        )
    return method  # type: ignore[no-any-return]


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def item_type_name(item: Item, spider: Spider) -> str:
    """Return the recorded type name of an item: `BookItem` → `book_item`; dicts use
    the spider's `item_type`."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclass_type_name(type(item))
    return spider.item_type


def dataclass_type_name(cls: type) -> str:
    """Return the recorded type name of a dataclass: `BookItem` → `book_item`."""
    return _CAMEL_BOUNDARY.sub("_", cls.__name__).lower()


def text_of(node: LexborNode | None, default: str = "") -> str:
    """Return a node's text, stripped, or `default` when the selector matched nothing."""
    if node is None:
        return default
    return node.text(deep=True).strip()
