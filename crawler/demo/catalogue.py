"""An offline books.toscrape.com: a seeded catalogue served by aiohttp for demos and tests.

URLs, relative links and markup follow the real site, so a spider written for it runs unchanged.
"""

from __future__ import annotations

import hashlib
import posixpath
import random
import re
import unicodedata
from dataclasses import dataclass
from html import escape
from typing import Final

from aiohttp import web

from crawler.demo.pages import html_not_found, html_response

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

_WARNING: Final = (
    '<div class="alert alert-warning" role="alert"><strong>Warning!</strong> This is a demo'
    " website for web scraping purposes. Prices and ratings here were randomly assigned and have"
    " no real meaning.</div>"
)
_DOCUMENT: Final = """<!DOCTYPE html>
<html lang="en-us" class="no-js">
<head>
  <title>{title} | Books to Scrape - Sandbox</title>
  <meta charset="utf-8">
  <meta name="created" content="24th Jun 2016 09:29" />
  <meta name="robots" content="NOARCHIVE,NOCACHE" />
</head>
<body id="default" class="default">
  <header class="header container-fluid"><div class="page_inner"><div class="row">
    <div class="col-sm-8 h1"><a href="{home}">Books to Scrape</a>
      <small> We love being scraped!</small></div>
  </div></div></header>
  <div class="container-fluid page"><div class="page_inner">
    <ul class="breadcrumb">
{crumbs}
    </ul>
{content}
  </div></div>
  <footer class="footer container-fluid"></footer>
</body>
</html>
"""
_LISTING: Final = """    <div class="row">
      <aside class="sidebar col-sm-4 col-md-3 col-lg-3">
        <div class="side_categories"><ul class="nav nav-list"><li>
          <a href="{books}">
            Books
          </a>
          <ul>
{categories}
          </ul>
        </li></ul></div>
      </aside>
      <div class="col-sm-8 col-md-9">
        <div class="page-header action"><h1>{heading}</h1></div>
        <form method="get" class="form-horizontal">
          {results}
        </form>
        <section>
          {warning}
          <div>
            <ol class="row">
{pods}
            </ol>
{pager}
          </div>
        </section>
      </div>
    </div>"""
_POD: Final = """<li class="col-xs-6 col-sm-4 col-md-3 col-lg-3"><article class="product_pod">
  <div class="image_container">
    <a href="{href}"><img src="{image}" alt="{title}" class="thumbnail"></a>
  </div>
  <p class="star-rating {rating}">{stars}</p>
  <h3><a href="{href}" title="{title}">{short}</a></h3>
  <div class="product_price">
    <p class="price_color">{price}</p>
    <p class="instock availability"><i class="icon-ok"></i>
      In stock
    </p>
    <form><button type="submit" class="btn btn-primary btn-block">Add to basket</button></form>
  </div>
</article></li>"""
_PRODUCT: Final = """    <article class="product_page"><!-- Start of product page -->
      <div class="row">
        <div class="col-sm-6"><div id="product_gallery" class="carousel"><div class="thumbnail">
          <div class="carousel-inner"><div class="item active"><img src="{image}" alt="{title}" />
          </div></div>
        </div></div></div>
        <div class="col-sm-6 product_main">
          <h1>{title}</h1><p class="price_color">{price}</p>
          <p class="instock availability"><i class="icon-ok"></i>
            {availability}
          </p>
          <p class="star-rating {rating}">{stars}</p>
          <hr/>
          {warning}
        </div><!-- /col-sm-6 -->
      </div><!-- /row -->
      <div id="product_description" class="sub-header"><h2>Product Description</h2></div>
      <p>{description} ...more</p>
      <div class="sub-header"><h2>Product Information</h2></div>
      <table class="table table-striped">
        <tr><th>UPC</th><td>{upc}</td></tr>
        <tr><th>Product Type</th><td>Books</td></tr>
        <tr><th>Price (excl. tax)</th><td>{price}</td></tr>
        <tr><th>Price (incl. tax)</th><td>{price}</td></tr>
        <tr><th>Tax</th><td>£0.00</td></tr>
        <tr><th>Availability</th><td>{availability}</td></tr>
        <tr><th>Number of reviews</th><td>0</td></tr>
      </table>
    </article><!-- End of product page -->"""
_CATEGORY: Final = '            <li><a href="{href}">{name}</a></li>'
_STARS: Final = '<i class="icon-star"></i>' * 5
_NOT_FOUND: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>404 Not Found</title></head>
<body><h1>404 Not Found</h1><p>The page you requested does not exist.</p></body></html>
"""
# Every cover is the same 8x8 mid-grey baseline JPEG: SOI, APP0 (JFIF), DQT (all ones),
# SOF0 (8x8, one component), two one-code Huffman tables (DC category 0; AC end-of-block),
# SOS, then the scan bits 0 (DC) and 0 (EOB) padded with ones (0x3F), and EOI.
_COVER: Final = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300" + "01" * 64
    + "ffc0000b080008000801011100ffc4001400" + "01" + "00" * 15 + "00"
    + "ffc4001410" + "01" + "00" * 15 + "00" + "ffda0008010100003f00" + "3fffd9"
)  # fmt: skip


def _slugify(text: str) -> str:
    """Turn a title into a URL slug the way Django's ``slugify`` does (ASCII only)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_text.lower())).strip("-_")


@dataclass(frozen=True, slots=True)
class _Category:
    number: int
    name: str

    @property
    def directory(self) -> str:
        return f"/catalogue/category/books/{_slugify(self.name)}_{self.number}/"


@dataclass(frozen=True, slots=True)
class _Book:
    number: int
    title: str
    pence: int
    rating: int
    stock: int
    upc: str
    category: _Category
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
class _Listing:
    """One paginated list of books: the catalogue, all books, or one category."""

    heading: str
    directory: str
    books: tuple[_Book, ...]
    crumbs: tuple[tuple[str, str], ...]

    @property
    def page_count(self) -> int:
        return max(1, -(-len(self.books) // BOOKS_PER_PAGE))

    def page_path(self, number: int) -> str:
        return f"{self.directory}page-{number}.html"


@dataclass(frozen=True, slots=True)
class _Catalogue:
    books: tuple[_Book, ...]
    categories: tuple[_Category, ...]
    listings: dict[str, _Listing]  # keyed by directory
    by_path: dict[str, _Book]
    images: frozenset[str]


_CATALOGUE: Final = web.AppKey("catalogue", _Catalogue)


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


def _generate(book_count: int, seed: int) -> _Catalogue:
    """Create the whole catalogue from ``seed``; the same arguments always give the same site."""
    rng = random.Random(seed)
    categories = tuple(_Category(n, name) for n, name in enumerate(CATEGORY_NAMES, start=2))
    # Every category gets a book when there are enough; popular ones get several pages.
    weights = [3 if c.name in _POPULAR else 1 for c in categories]
    spread = list(categories)[: min(book_count, len(categories))]
    spread += rng.choices(categories, weights, k=book_count - len(spread))
    rng.shuffle(spread)
    titles: set[str] = set()
    upcs: set[str] = set()
    books: list[_Book] = []
    for index, category in enumerate(spread):
        while (title := _title(rng)) in titles:
            pass
        while (upc := f"{rng.getrandbits(64):016x}") in upcs:
            pass
        titles.add(title)
        upcs.add(upc)
        pence, rating, stock = rng.randint(1000, 5999), rng.randint(1, 5), rng.randint(1, 22)
        number = book_count - index  # like the real site, the first book has the highest id
        books.append(_Book(number, title, pence, rating, stock, upc, category, _blurb(rng, title)))
    home = ("Home", "/index.html")
    all_books = _Listing("Books", "/catalogue/category/books_1/", tuple(books), (home,))
    listings = {
        "/catalogue/": _Listing("All products", "/catalogue/", tuple(books), (home,)),
        all_books.directory: all_books,
    }
    for c in categories:
        shelf = tuple(b for b in books if b.category is c)
        crumbs = (home, ("Books", "/catalogue/category/books_1/index.html"))
        listings[c.directory] = _Listing(c.name, c.directory, shelf, crumbs)
    return _Catalogue(
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
        for b in _generate(book_count, seed).books
    ]  # fmt: skip


def _link(page: str, target: str) -> str:
    """Write ``target`` relative to the page at ``page``, as the real site's links are."""
    return posixpath.relpath(target, posixpath.dirname(page))


def _document(page: str, title: str, crumbs: list[tuple[str, str]], active: str, body: str) -> str:
    items = [
        f'      <li><a href="{_link(page, path)}">{escape(text)}</a></li>' for text, path in crumbs
    ]
    items.append(f'      <li class="active">{escape(active)}</li>')
    return _DOCUMENT.format(
        title=escape(title), home=_link(page, "/index.html"), crumbs="\n".join(items), content=body
    )


def _render_listing(catalogue: _Catalogue, listing: _Listing, number: int, page: str) -> str:
    """Render page ``number`` of ``listing`` as served at ``page``."""
    start = (number - 1) * BOOKS_PER_PAGE
    shown = listing.books[start : start + BOOKS_PER_PAGE]
    pods = []
    for b in shown:
        words = b.title.split()
        short = " ".join(words[:4]) + " ..." if len(words) > 4 else b.title
        pods.append(_POD.format(
            href=_link(page, b.path), image=_link(page, b.image), title=escape(b.title),
            rating=RATING_WORDS[b.rating - 1], stars=_STARS, short=escape(short), price=b.price,
        ))  # fmt: skip
    categories = "\n".join(
        _CATEGORY.format(href=_link(page, f"{c.directory}index.html"), name=escape(c.name))
        for c in catalogue.categories
    )
    total = len(listing.books)
    results = f"<strong>{total}</strong> result{'' if total == 1 else 's'}"
    if total > BOOKS_PER_PAGE:
        last = start + len(shown)
        results += f" - showing <strong>{start + 1}</strong> to <strong>{last}</strong>"
    pager = ""
    if listing.page_count > 1:
        links = [f'<li class="current">Page {number} of {listing.page_count}</li>']
        if number > 1:
            href = _link(page, listing.page_path(number - 1))
            links.insert(0, f'<li class="previous"><a href="{href}">previous</a></li>')
        if number < listing.page_count:
            href = _link(page, listing.page_path(number + 1))
            links.append(f'<li class="next"><a href="{href}">next</a></li>')
        pager = '            <div><ul class="pager">' + "".join(links) + "</ul></div>"
    body = _LISTING.format(
        books=_link(page, "/catalogue/category/books_1/index.html"), categories=categories,
        heading=escape(listing.heading), results=results + ".", warning=_WARNING,
        pods="\n".join(pods), pager=pager,
    )  # fmt: skip
    return _document(page, listing.heading, list(listing.crumbs), listing.heading, body)


def _render_book(book: _Book) -> str:
    body = _PRODUCT.format(
        image=_link(book.path, book.image), title=escape(book.title), price=book.price,
        availability=book.availability, rating=RATING_WORDS[book.rating - 1], stars=_STARS,
        warning=_WARNING, description=escape(book.description), upc=book.upc,
    )  # fmt: skip
    crumbs = [
        ("Home", "/index.html"),
        ("Books", "/catalogue/category/books_1/index.html"),
        (book.category.name, book.category.directory + "index.html"),
    ]
    return _document(book.path, book.title, crumbs, book.title, body)


def _page_number(name: str) -> int:
    return 1 if name == "index.html" else int(name.removeprefix("page-").removesuffix(".html"))


async def _home(request: web.Request) -> web.Response:
    catalogue = request.app[_CATALOGUE]
    return html_response(
        _render_listing(catalogue, catalogue.listings["/catalogue/"], 1, "/index.html")
    )


async def _listing(request: web.Request) -> web.Response:
    catalogue = request.app[_CATALOGUE]
    directory, name = request.path.rsplit("/", 1)
    listing = catalogue.listings.get(directory + "/")
    number = _page_number(name)
    if listing is None or number > listing.page_count:
        raise web.HTTPNotFound
    return html_response(_render_listing(catalogue, listing, number, request.path))


async def _book(request: web.Request) -> web.Response:
    if (book := request.app[_CATALOGUE].by_path.get(request.path)) is None:
        raise web.HTTPNotFound
    return html_response(_render_book(book))


async def _cover(request: web.Request) -> web.Response:
    if request.path not in request.app[_CATALOGUE].images:
        raise web.HTTPNotFound
    return web.Response(body=_COVER, content_type="image/jpeg")


async def _robots(request: web.Request) -> web.Response:
    return web.Response(text="User-agent: *\nAllow: /\n")


def catalogue_app(book_count: int = 300, seed: int = 7) -> web.Application:
    """Build the offline books.toscrape.com: same URLs, relative links and markup as the real site.

    The catalogue is generated once per app from ``seed`` and pages are rendered per request.
    ``expected_books(book_count, seed)`` lists what a spider should extract from it.

    Args:
        book_count: Number of books; listings show 20 books per page.
        seed: Seed for the generator.

    Returns:
        An aiohttp application serving ``/``, ``/index.html``, ``/catalogue/page-N.html``,
        category listings, product pages, cover images and ``/robots.txt``.
    """
    app = web.Application(middlewares=[html_not_found(_NOT_FOUND)])
    app[_CATALOGUE] = _generate(book_count, seed)
    page = r"{page:index\.html|page-[1-9][0-9]*\.html}"
    app.router.add_get("/", _home)
    app.router.add_get("/index.html", _home)
    app.router.add_get("/robots.txt", _robots)
    app.router.add_get(r"/catalogue/{page:page-[1-9][0-9]*\.html}", _listing)
    app.router.add_get("/catalogue/category/books_1/" + page, _listing)
    app.router.add_get(r"/catalogue/category/books/{category:[a-z0-9-]+_[0-9]+}/" + page, _listing)
    app.router.add_get(r"/catalogue/{book:[a-z0-9-]+_[0-9]+}/index.html", _book)
    app.router.add_get(r"/media/cache/{a:[0-9a-f]{2}}/{b:[0-9a-f]{2}}/{h:[0-9a-f]{32}}.jpg", _cover)
    return app
