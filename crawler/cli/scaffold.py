"""`crawler new`: write a typed, working spider for a site, for the user to edit.

The generated spider follows the site's internal links and yields one `Page` item (a
dataclass: URL and title) per page. It passes `mypy --strict` and runs at once with
`crawler crawl NAME`.
"""

from __future__ import annotations

import json
import keyword
from pathlib import Path
from typing import Final

from yarl import URL

from crawler.errors import ConfigError, SpiderError

__all__ = ["spider_source", "write_spider"]

_TEMPLATE: Final = '''\
"""Spider for {host}, made by `crawler new`: edit `Page` and `parse` to extract your data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from crawler import RequestBatch, Response, Spider, text_of


@dataclass
class Page:
    """One page of the site; replace these fields with the data you want."""

    url: str
    title: str


class {class_name}(Spider):
    """Follow the site's links and yield each page's title.

    Try it on a few pages first: `crawler crawl {name} --max-pages 20`.
    """

    name = "{name}"
    start_urls = ({url},)
    allowed_domains = ({host_literal},)

    async def parse(self, response: Response) -> AsyncIterator[Page | RequestBatch]:
        """Yield this page's item, then follow its links (other sites' links are skipped)."""
        yield Page(url=response.url, title=text_of(response.css_first("title")))
        yield response.follow_all()
'''


def spider_source(name: str, url: str) -> str:
    """Return the source of a new spider called `name` that starts at `url`.

    Raises:
        SpiderError: `name` is not a Python identifier (it names the module and the spider).
        ConfigError: `url` is not an absolute http(s) URL.
    """
    if not name.isidentifier() or keyword.iskeyword(name):
        raise SpiderError(
            f"spider name {name!r} must be a Python identifier (letters, digits, underscores; "
            "not starting with a digit), e.g. bookshop"
        )
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad URL {url!r}: {exc}") from None
    host = parsed.raw_host
    if parsed.scheme not in ("http", "https") or not host:
        raise ConfigError(f"bad URL {url!r}: expected an absolute http:// or https:// URL")
    class_name = "".join(part[:1].upper() + part[1:] for part in name.split("_")) + "Spider"
    return _TEMPLATE.format(
        host=host,
        class_name=class_name,
        name=name,
        url=json.dumps(url),  # a JSON string is a valid Python literal, escapes included
        host_literal=json.dumps(host),
    )


def write_spider(name: str, url: str, directory: Path) -> Path:
    """Write the spider `name` to `directory/name.py` (creating the directory) and return it.

    Raises:
        SpiderError: bad name, or the file already exists (it is never overwritten).
        ConfigError: bad URL.
    """
    source = spider_source(name, url)
    path = directory / f"{name}.py"
    if path.exists():
        raise SpiderError(f"{path} already exists; choose another name or remove the file")
    directory.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as out:
        out.write(source)
    return path
