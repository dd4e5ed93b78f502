"""A shop on loopback whose pages change between runs: the site the re-crawl tests crawl.

`Shop` holds each product's version; a test bumps some between two crawls. Product pages
send an `ETag` and a `Last-Modified` that follow the version and, when the shop honours
validators, answer `If-None-Match` / `If-Modified-Since` with `304 Not Modified`; a shop
that ignores them always answers 200 (the crawler then compares body hashes). Every request
is logged with the validators it carried.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

from aiohttp import web

from crawler import Request, Response, Spider, text_of
from tests.sites import html_page

__all__ = ["Hit", "Product", "Shop", "ShopSpider", "shop_app"]

_EPOCH = 1_700_000_000


@dataclass(frozen=True)
class Hit:
    """One request the shop received."""

    path: str
    if_none_match: str | None
    if_modified_since: str | None
    status: int


@dataclass
class Shop:
    """The shop's state: products and their versions, and what it was asked."""

    products: int = 10
    honour_validators: bool = True
    versions: dict[int, int] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    extra: list[int] = field(default_factory=list)
    """Products listed on the index beyond the first `products` (added between runs)."""
    hits: list[Hit] = field(default_factory=list)

    def version(self, n: int) -> int:
        return self.versions.get(n, 0)

    def change(self, *numbers: int) -> None:
        for n in numbers:
            self.versions[n] = self.version(n) + 1

    def price(self, n: int) -> float:
        return 10.0 + n + self.version(n) / 2

    def hits_of(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]


def _answer(
    shop: Shop, request: web.Request, body: str, version_key: str, stamp: int
) -> web.Response:
    etag = f'"{version_key}"'
    modified = email.utils.formatdate(stamp, usegmt=True)
    inm, ims = request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
    status = 200
    if shop.honour_validators and (inm == etag or (inm is None and ims == modified)):
        status = 304
    shop.hits.append(Hit(request.path, inm, ims, status))
    headers = {"ETag": etag, "Last-Modified": modified}
    if status == 304:
        return web.Response(status=304, headers=headers)
    return web.Response(text=body, content_type="text/html", headers=headers)


def shop_app(shop: Shop) -> web.Application:
    """The shop's pages: `/` lists every product, `/p/N` shows one (name, sku, price)."""

    async def index(request: web.Request) -> web.Response:
        listed = [*range(shop.products), *shop.extra]
        links = "".join(f'<a class="product" href="/p/{n}">product {n}</a>' for n in listed)
        key = f"index-{len(listed)}"
        return _answer(shop, request, html_page(links, title="shop"), key, _EPOCH + len(listed))

    async def product(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n in shop.gone:
            shop.hits.append(Hit(request.path, None, None, 404))
            raise web.HTTPNotFound()
        body = (
            f"<h1>Product {n}</h1><span class='sku'>SKU-{n}</span>"
            f"<p class='price'>{shop.price(n):.2f}</p>"
        )
        version = shop.version(n)
        return _answer(shop, request, html_page(body), f"{n}-{version}", _EPOCH + version)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/p/{n:\\d+}", product)
    return app


@dataclass
class Product:
    name: str
    sku: str
    price: float


class ShopSpider(Spider):
    """Follows the index's product links and yields one `Product` per product page."""

    name = "shop"
    settings: ClassVar[dict[str, object]] = {
        "obey_robots": False,
        "autothrottle": False,
        "progress_interval": 60.0,
        "allow_private_addresses": True,
    }

    async def parse(self, response: Response) -> AsyncIterator[object]:
        yield response.follow_all(response.css("a.product"), callback=self.parse_product)

    async def parse_product(self, response: Response) -> AsyncIterator[Product | Request]:
        yield Product(
            name=text_of(response.css_first("h1")),
            sku=text_of(response.css_first(".sku")),
            price=float(text_of(response.css_first(".price"))),
        )
