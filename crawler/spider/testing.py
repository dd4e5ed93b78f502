"""Testing spiders without the network: recorded page fixtures and `run_callback`.

`run_callback` runs one spider callback over a page, given as HTML text, an HTML file or a
fixture recorded by `crawler record`, and returns what it yielded. The `Response` it builds is
the one a crawl builds (`crawler.spider.http.Response` around a `Request` carrying callback, depth
and meta), so a test exercises exactly the code a crawl runs.

Fixture format (one page = two files, named after the URL's path, e.g. `catalogue-page-2`):

- `<slug>.json`: `{"url": requested URL, "final_url": URL after redirects, "status": 200,
  "headers": {"Content-Type": "text/html; charset=utf-8", ...}, "body": "<slug>.html",
  "recorded_at": ISO-8601 time, "source": "network" or the crawl database's file name}`
- `<slug>.html` (`.body` for other content types): the body exactly as received, after
  content decoding (so `Content-Encoding` and `Content-Length` are not kept in `headers`).

Pass either file of the pair to `run_callback`.

Example:
    ```python
    from pathlib import Path

    from crawler.spider.testing import run_callback
    from spiders.quotes import Author, QuotesSpider


    async def test_author_page() -> None:
        page = Path("tests/fixtures/quotes/author-Wilhelmina-Ferrer.json")
        result = await run_callback(QuotesSpider, page, callback="parse_author")
        assert result.items == [Author("Wilhelmina Ferrer", "May 14, 1926", "in Porto, Portugal")]
        assert result.requests == []
    ```
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from yarl import URL

from crawler.errors import SpiderError
from crawler.records import utc_now
from crawler.spider.base import Spider, callback_of
from crawler.spider.http import Item, Request, RequestBatch, Response
from crawler.spider.items import is_item
from crawler.spider.rules import Refused

__all__ = [
    "CallbackResult",
    "PageFixture",
    "fixture_name",
    "load_fixture",
    "run_callback",
    "save_fixture",
]

DEFAULT_URL: Final = "http://localhost/"
_DROPPED_HEADERS: Final = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_SLUG_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.]+")
_SLUG_MAX: Final = 80


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackResult:
    """What one callback yielded, in order, and the response it was given."""

    items: list[Item]
    requests: list[Request]
    response: Response


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PageFixture:
    """A recorded page: what `<slug>.json` describes, with the body read from its file."""

    url: str
    """The URL that was requested."""
    final_url: str
    """The URL after redirects (`response.url`)."""
    status: int
    headers: dict[str, str]
    body: bytes


async def run_callback(
    spider: type[Spider] | Spider,
    page: str | Path,
    *,
    url: str | None = None,
    callback: str = "parse",
    meta: dict[str, Any] | None = None,
    depth: int = 0,
) -> CallbackResult:
    """Run one callback of a spider over a page and return the items and requests it yields.

    Nothing is fetched, validated or stored: items are returned as yielded, and requests are
    not checked against `allowed_domains` or de-duplicated (a `follow_all()` batch counts as
    its requests, in order; links a `CrawlSpider`'s rules refuse are left out). An exception
    raised by the callback propagates, so the test shows it.

    Args:
        spider: the spider class (or an instance).
        page: HTML text (`str`), or a `Path` to a fixture (either file of a `crawler record`
            pair) or to any HTML file.
        url: the page's URL; defaults to the fixture's URL, else the spider's first start URL,
            else `http://localhost/`.
        callback: the name of the spider method to run.
        meta: the request's `meta`, as `response.meta` shows it.
        depth: the request's depth, as `response.depth` shows it.

    Raises:
        SpiderError: the callback does not exist, is not an async generator, yields something
            that is neither an item nor a Request, or yields a Request for an unknown callback.
    """
    instance = spider() if isinstance(spider, type) else spider
    fixture = _page_of(page, url or _default_url(instance))
    request = Request(url or fixture.url, callback=callback, meta=meta, depth=depth)
    response = Response(
        url=url or fixture.final_url,
        status=fixture.status,
        headers=fixture.headers,
        body=fixture.body,
        request=request,
    )
    items, requests = await _outputs(instance, callback, response)
    return CallbackResult(items=items, requests=requests, response=response)


async def _outputs(
    spider: Spider, callback: str, response: Response
) -> tuple[list[Item], list[Request]]:
    """Run the callback over `response`: the items and requests it yields, checked as a crawl
    checks their types and callbacks."""
    method = callback_of(spider, callback)
    items: list[Item] = []
    requests: list[Request] = []
    async for output in method(response):
        if isinstance(output, Request):
            callback_of(spider, output.callback)  # a crawl refuses unknown callbacks too
            requests.append(output)
        elif isinstance(output, RequestBatch):
            if output.urls:
                callback_of(spider, output.callback)
            requests.extend(output)
        elif isinstance(output, Refused):
            continue  # a link a CrawlSpider's rules do not follow: a crawl records it as skipped
        elif is_item(output):
            items.append(output)
        else:
            raise SpiderError(
                f"callback {callback} yielded {type(output).__name__}, expected an item "
                "(dict or dataclass) or a Request"
            )
    return items, requests


def load_fixture(path: Path) -> PageFixture:
    """Read a recorded page, given its `.json` file or its body file.

    Raises:
        SpiderError: the file is missing or is not a fixture.
    """
    meta_path = path if path.suffix == ".json" else path.with_suffix(".json")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
        body = (meta_path.parent / str(data["body"])).read_bytes()
        return PageFixture(
            url=str(data["url"]),
            final_url=str(data.get("final_url") or data["url"]),
            status=int(data["status"]),
            headers={str(k): str(v) for k, v in dict(data["headers"]).items()},
            body=body,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpiderError(f"{meta_path} is not a readable page fixture: {exc}") from None


def save_fixture(
    directory: Path,
    *,
    url: str,
    final_url: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    source: str = "network",
) -> Path:
    """Write a page as a fixture pair in `directory` and return the path of its `.json` file.

    The file name comes from the URL's path and query. Recording the same URL again replaces
    its fixture; another URL with the same name gets a numbered one (`index-2.json`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = fixture_name(url)
    meta_path = directory / f"{stem}.json"
    number = 1
    while meta_path.exists() and _recorded_url(meta_path) != url:
        number += 1
        meta_path = directory / f"{stem}-{number}.json"
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    is_html = "html" in content_type.lower()
    body_path = meta_path.with_suffix(".html" if is_html else ".body")
    body_path.write_bytes(body)
    record = {
        "url": url,
        "final_url": final_url,
        "status": status,
        "headers": {k: v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS},
        "body": body_path.name,
        "recorded_at": utc_now(),
        "source": source,
    }
    meta_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta_path


def fixture_name(url: str) -> str:
    """Return the file stem for a URL: its path and query, `/` → `index`.

    Example: `http://host/catalogue/page-2.html` → `catalogue-page-2`.
    """
    parsed = URL(url)
    path = parsed.raw_path.strip("/")
    for suffix in (".html", ".htm"):
        path = path.removesuffix(suffix)
    text = path or "index"
    if parsed.raw_query_string:
        text += "-" + parsed.raw_query_string
    slug = _SLUG_UNSAFE.sub("-", text).strip("-.") or "index"
    return slug[:_SLUG_MAX].rstrip("-.")


def _recorded_url(meta_path: Path) -> str | None:
    try:
        return str(json.loads(meta_path.read_text(encoding="utf-8")).get("url"))
    except (OSError, ValueError, AttributeError):
        return None


def _page_of(page: str | Path, url: str) -> PageFixture:
    if isinstance(page, str):
        return _html_page(url, page.encode("utf-8"), "text/html; charset=utf-8")
    if page.suffix == ".json" or page.with_suffix(".json").is_file():
        return load_fixture(page)
    try:
        body = page.read_bytes()
    except OSError as exc:
        raise SpiderError(f"cannot read {page}: {exc.strerror or exc}") from None
    return _html_page(url, body, "text/html")


def _html_page(url: str, body: bytes, content_type: str) -> PageFixture:
    return PageFixture(
        url=url, final_url=url, status=200, headers={"Content-Type": content_type}, body=body
    )


def _default_url(spider: Spider) -> str:
    return spider.start_urls[0] if spider.start_urls else DEFAULT_URL
