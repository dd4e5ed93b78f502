"""The books of the offline books.toscrape.com: a catalogue generated from a seed (titles,
prices, ratings, categories and the listings that page through them), and what a spider
should extract from it (`expected_books`). crawler.demo.catalogue renders and serves it.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BOOKS_PER_PAGE",
    "CATEGORY_NAMES",
    "RATING_WORDS",
    "Book",
    "Catalogue",
    "Category",
    "Listing",
    "expected_books",
    "generate",
]

BOOKS_PER_PAGE: Final = 20
RATING_WORDS: Final = ("One", "Two", "Three", "Four", "Five")
CATEGORY_NAMES: Final = (
    "Travel", "Mystery", "Historical Fiction", "Classics", "Philosophy", "Romance", "Fiction",
    "Childrens", "Nonfiction", "Music", "Science Fiction", "Fantasy", "Young Adult", "Science",
    "Poetry", "Art", "History", "Food and Drink", "Business", "Horror",
)  # fmt: skip
_POPULAR: Final = frozenset({"Mystery", "Romance", "Fiction", "Fantasy", "Young Adult"})

_ADJECTIVES: Final = (
    "Silent", "Hidden", "Last", "Broken", "Golden", "Forgotten", "Distant", "Burning", "Quiet",
    "Midnight", "Scarlet", "Wandering", "Hollow", "Crimson", "Secret", "Northern", "Endless",
    "Painted", "Little", "Winter", "Lost", "Gentle", "Wild", "Restless", "Invisible", "Velvet",
    "Salt", "Paper", "Glass", "Iron",
)  # fmt: skip
_NOUNS: Final = (
    "Harbour", "Garden", "River", "Lantern", "Orchard", "Compass", "Mirror", "Kingdom", "Archive",
    "Lighthouse", "Meadow", "Citadel", "Island", "Station", "Forest", "Letter", "Bridge",
    "Cathedral", "Voyage", "Library", "Promise", "Tide", "Feather", "Shadow", "Atlas", "Bookshop",
    "Vineyard", "Observatory", "Café", "Labyrinth",
)  # fmt: skip
_PEOPLE: Final = (
    "Cartographer", "Beekeeper", "Watchmaker", "Lighthouse Keeper", "Botanist", "Clockmaker",
    "Ferryman", "Astronomer", "Archivist", "Tailor", "Glassblower", "Translator",
)  # fmt: skip
_KIN: Final = ("Daughter", "Apprentice", "Wife", "Son", "Notebook", "Secret", "Last Summer")
_PLACES: Final = (
    "Ashford", "Lisbon", "the North", "Saltmarsh", "Kestrel Bay", "Malmö", "Ravenhill",
    "the Baltic", "Eldermoor", "Port Isaac", "Kyoto", "the Andes",
)  # fmt: skip
_SUBTITLES: Final = (
    "A Novel", "A Memoir", "Stories", "Poems", "A Journey Through {place}",
    "A History of the {noun}", "Notes from {place}",
)  # fmt: skip
_SERIES: Final = (
    "The Eldermoor Chronicles", "Kestrel Bay Mysteries", "The Salt Road", "Inspector Vane",
    "The Lantern Cycle",
)  # fmt: skip
_TITLES: Final = {  # template: weight
    "The {adj} {noun}": 6, "The {noun} of {place}": 3, "The {person}'s {kin}": 3,
    "{adj} {noun}: {subtitle}": 3, "The {noun} at the End of the {noun2}": 2, "{noun} & {noun2}": 1,
    "A {noun} in the {noun2}": 1, "Letters from {place}": 1, "“{adj}” and Other Stories": 1,
    "What the {person} Knew": 1,
}  # fmt: skip
_BLURBS: Final = (
    "{title} follows a {person} who returns to {place} after twenty years away.",
    "Nothing in {place} is quite what it seems, least of all the {noun}.",
    "A {adj} story of loss, luck and the people we choose to trust.",
    "Told in {n} chapters, it moves between the {noun} and the {noun2}.",
    "Readers who loved {series} will find a new favourite here.",
    "Part travelogue, part confession, it asks what a {noun} is for.",
)  # fmt: skip


def _slugify(text: str) -> str:
    """Turn a title into a URL slug the way Django's ``slugify`` does (ASCII only)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_text.lower())).strip("-_")


@dataclass(frozen=True, slots=True)
class Category:
    """A category of books and the directory of its listing."""

    number: int
    name: str

    @property
    def directory(self) -> str:
        return f"/catalogue/category/books/{_slugify(self.name)}_{self.number}/"


@dataclass(frozen=True, slots=True)
class Book:
    """One book, with the paths and texts its pages show."""

    number: int
    title: str
    pence: int
    rating: int
    stock: int
    upc: str
    category: Category
    description: str

    @property
    def path(self) -> str:
        return f"/catalogue/{_slugify(self.title)}_{self.number}/index.html"

    @property
    def image(self) -> str:
        digest = hashlib.md5(self.upc.encode(), usedforsecurity=False).hexdigest()
        return f"/media/cache/{digest[:2]}/{digest[2:4]}/{digest}.jpg"

    @property
    def price(self) -> str:
        return f"£{self.pence // 100}.{self.pence % 100:02d}"

    @property
    def availability(self) -> str:
        return f"In stock ({self.stock} available)"


@dataclass(frozen=True, slots=True)
class Listing:
    """One paginated list of books: the catalogue, all books, or one category."""

    heading: str
    directory: str
    books: tuple[Book, ...]
    crumbs: tuple[tuple[str, str], ...]

    @property
    def page_count(self) -> int:
        return max(1, -(-len(self.books) // BOOKS_PER_PAGE))

    def page_path(self, number: int) -> str:
        return f"{self.directory}page-{number}.html"


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The whole generated site: its books, categories, listings and the paths it serves."""

    books: tuple[Book, ...]
    categories: tuple[Category, ...]
    listings: dict[str, Listing]  # keyed by directory
    by_path: dict[str, Book]
    images: frozenset[str]


def _title(rng: random.Random) -> str:
    words = {
        "adj": rng.choice(_ADJECTIVES), "noun": rng.choice(_NOUNS), "noun2": rng.choice(_NOUNS),
        "place": rng.choice(_PLACES), "person": rng.choice(_PEOPLE), "kin": rng.choice(_KIN),
    }  # fmt: skip
    words["subtitle"] = rng.choice(_SUBTITLES).format(**words)
    title = rng.choices(list(_TITLES), list(_TITLES.values()))[0].format(**words)
    if rng.random() < 0.15:
        title += f" ({rng.choice(_SERIES)} #{rng.randint(1, 6)})"
    return title


def _blurb(rng: random.Random, title: str) -> str:
    words = {
        "title": title, "person": rng.choice(_PEOPLE).lower(), "place": rng.choice(_PLACES),
        "noun": rng.choice(_NOUNS).lower(), "noun2": rng.choice(_NOUNS).lower(),
        "adj": rng.choice(_ADJECTIVES).lower(), "n": rng.randint(7, 40),
        "series": rng.choice(_SERIES),
    }  # fmt: skip
    first, *rest = _BLURBS
    return " ".join(s.format(**words) for s in [first, *rng.sample(rest, rng.randint(2, 4))])


def generate(book_count: int, seed: int) -> Catalogue:
    """Create the whole catalogue from ``seed``; the same arguments always give the same site."""
    rng = random.Random(seed)
    categories = tuple(Category(n, name) for n, name in enumerate(CATEGORY_NAMES, start=2))
    # Every category gets a book when there are enough; popular ones get several pages.
    weights = [3 if c.name in _POPULAR else 1 for c in categories]
    spread = list(categories)[: min(book_count, len(categories))]
    spread += rng.choices(categories, weights, k=book_count - len(spread))
    rng.shuffle(spread)
    titles: set[str] = set()
    upcs: set[str] = set()
    books: list[Book] = []
    for index, category in enumerate(spread):
        while (title := _title(rng)) in titles:
            pass
        while (upc := f"{rng.getrandbits(64):016x}") in upcs:
            pass
        titles.add(title)
        upcs.add(upc)
        pence, rating, stock = rng.randint(1000, 5999), rng.randint(1, 5), rng.randint(1, 22)
        number = book_count - index  # like the real site, the first book has the highest id
        books.append(Book(number, title, pence, rating, stock, upc, category, _blurb(rng, title)))
    home = ("Home", "/index.html")
    all_books = Listing("Books", "/catalogue/category/books_1/", tuple(books), (home,))
    listings = {
        "/catalogue/": Listing("All products", "/catalogue/", tuple(books), (home,)),
        all_books.directory: all_books,
    }
    for c in categories:
        shelf = tuple(b for b in books if b.category is c)
        crumbs = (home, ("Books", "/catalogue/category/books_1/index.html"))
        listings[c.directory] = Listing(c.name, c.directory, shelf, crumbs)
    return Catalogue(
        books=tuple(books),
        categories=categories,
        listings=listings,
        by_path={b.path: b for b in books},
        images=frozenset(b.image for b in books),
    )


def expected_books(book_count: int = 300, seed: int = 7) -> list[dict[str, object]]:
    """Return what a books.toscrape.com spider should extract from ``catalogue_app(...)``.

    Args:
        book_count: Number of books in the catalogue.
        seed: Seed for the generator.

    Returns:
        One dict per book, in catalogue order, with ``title``, ``price`` (float), ``availability``,
        ``rating`` (1-5), ``upc``, ``category`` and ``url`` (the path of its product page).
    """
    return [
        {
            "title": b.title, "price": b.pence / 100, "availability": b.availability,
            "rating": b.rating, "upc": b.upc, "category": b.category.name, "url": b.path,
        }
        for b in generate(book_count, seed).books
    ]  # fmt: skip
