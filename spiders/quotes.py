"""Quotes from quotes.toscrape.com, following pagination and author pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from crawler import Request, Response, Spider, text_of


@dataclass
class Quote:
    """One quote on a listing page."""

    text: str
    author: str
    tags: list[str]


@dataclass
class Author:
    """One author's "about" page."""

    name: str
    born: str
    born_location: str


class QuotesSpider(Spider):
    """Read every quote page by page, and each author's page once."""

    name = "quotes"
    start_urls = ("https://quotes.toscrape.com/",)
    allowed_domains = ("quotes.toscrape.com",)

    async def parse(self, response: Response) -> AsyncIterator[Quote | Request]:
        """Yield the quotes on this page, then follow their authors and the next page."""
        for quote in response.css("div.quote"):
            yield Quote(
                text=text_of(quote.css_first("span.text")),
                author=text_of(quote.css_first("small.author")),
                tags=[text_of(tag) for tag in quote.css("div.tags a.tag")],
            )
            if author := quote.css_first("a[href^='/author/']"):
                yield response.follow(author, callback=self.parse_author)
        if next_page := response.css_first("li.next a"):
            yield response.follow(next_page)

    async def parse_author(self, response: Response) -> AsyncIterator[Author]:
        """Yield the author described on this page."""
        yield Author(
            name=text_of(response.css_first("h3.author-title")),
            born=text_of(response.css_first("span.author-born-date")),
            born_location=text_of(response.css_first("span.author-born-location")),
        )
