"""Books from books.toscrape.com: every listing page, every category, every product page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from crawler import Request, RequestBatch, Response, Spider, text_of

RATINGS: Final = {"One": 1, "Two": 2, "Three": 3, "Four": 4, "Five": 5}


@dataclass
class Book:
    """One product page of the catalogue."""

    title: str
    price: float
    availability: str
    rating: int
    upc: str
    category: str


class BooksSpider(Spider):
    """Walk the catalogue and its categories, and read every book's product page."""

    name = "books"
    start_urls = ("https://books.toscrape.com/",)
    allowed_domains = ("books.toscrape.com",)
    item_types = (Book,)

    async def parse(self, response: Response) -> AsyncIterator[Book | Request | RequestBatch]:
        """Follow the sidebar categories, the books listed here and the next listing page."""
        yield response.follow_all(response.css("div.side_categories ul li ul li a"))
        yield response.follow_all(
            response.css("article.product_pod h3 a"), callback=self.parse_book
        )
        if next_page := response.css_first("li.next a"):
            yield response.follow(next_page)

    async def parse_book(self, response: Response) -> AsyncIterator[Book]:
        """Read one product page: the title block, the information table and the breadcrumb."""
        info = {
            text_of(row.css_first("th")): text_of(row.css_first("td"))
            for row in response.css("table.table-striped tr")
        }
        stars = response.css_first("div.product_main p.star-rating")
        classes = (stars.attributes.get("class") or "").split() if stars else []
        yield Book(
            title=text_of(response.css_first("div.product_main h1")),
            price=float(text_of(response.css_first("div.product_main p.price_color")).lstrip("£")),
            availability=info.get("Availability", ""),
            rating=next((RATINGS[word] for word in classes if word in RATINGS), 0),
            upc=info.get("UPC", ""),
            category=text_of(response.css_first("ul.breadcrumb li:nth-child(3) a")),
        )
