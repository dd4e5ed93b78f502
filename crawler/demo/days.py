"""The demo catalogue day after day, for re-crawls: on each day after day 0 the stock of a few
books changes, so that 5% of the site's pages (product pages only: listings show no stock
count) are not what they were the day before. Each day's choice is seeded, so day N is the
same site in every run.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Final

from crawler.demo.books import Catalogue

ALL_BOOKS_DIRECTORY: Final = "/catalogue/category/books_1/"

__all__ = ["CHANGED_SHARE", "changed_on", "on_day", "page_count"]

CHANGED_SHARE: Final = 0.05
"""The share of the catalogue's pages that change from one day to the next."""


def page_count(catalogue: Catalogue) -> int:
    """The HTML pages the `books` spider fetches: every page of the catalogue (the first is
    the home page) and of each category, and every book (the "Books" listing repeats the
    catalogue's and is not followed)."""
    listings = sum(
        listing.page_count
        for directory, listing in catalogue.listings.items()
        if directory != ALL_BOOKS_DIRECTORY
    )
    return listings + len(catalogue.books)


def changed_on(catalogue: Catalogue, day: int) -> frozenset[int]:
    """The numbers of the books whose stock changes on `day` (none on day 0)."""
    if day <= 0:
        return frozenset()
    count = min(len(catalogue.books), round(page_count(catalogue) * CHANGED_SHARE))
    numbers = sorted(book.number for book in catalogue.books)
    return frozenset(random.Random(f"day {day}").sample(numbers, count))


def on_day(catalogue: Catalogue, day: int) -> Catalogue:
    """The catalogue as it is on `day`: each book sold one copy on every day it changed (and
    is restocked by 20 when it runs out)."""
    sold = dict.fromkeys((book.number for book in catalogue.books), 0)
    for past in range(1, day + 1):
        for number in changed_on(catalogue, past):
            sold[number] += 1
    if not any(sold.values()):
        return catalogue
    books = {
        book.number: dataclasses.replace(book, stock=_stock(book.stock, sold[book.number]))
        for book in catalogue.books
    }
    listings = {
        directory: dataclasses.replace(
            listing, books=tuple(books[book.number] for book in listing.books)
        )
        for directory, listing in catalogue.listings.items()
    }
    return dataclasses.replace(
        catalogue,
        books=tuple(books[book.number] for book in catalogue.books),
        listings=listings,
        by_path={book.path: book for book in books.values()},
    )


def _stock(start: int, sold: int) -> int:
    left = start - sold
    while left <= 0:
        left += 20
    return left
