"""An offline quotes.toscrape.com: seeded quotes, authors and tags served by aiohttp.

URLs and markup follow the real site, so a spider written for it runs unchanged.
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from html import escape
from typing import Final

from aiohttp import web

from crawler.demo.pages import html_not_found, html_response

QUOTES_PER_PAGE: Final = 10

_FIRST_NAMES: Final = (
    "Ada", "Tobias", "Eleanor", "Samuel", "Ines", "Hugo", "Wilhelmina", "Kenji", "Clara", "Arthur",
    "Rosalind", "Nikolai", "Beatrix", "Émile", "Harriet", "Matteo", "Lucía", "Oluwaseun", "Margit",
    "Desmond",
)  # fmt: skip
_SURNAMES: Final = (
    "Whitcombe", "Merriweather", "Okafor", "Carvalho", "Bellamy", "Fraser", "Arakawa", "Dufresne",
    "Penhaligon", "Achterberg", "Vasko", "Holloway", "Fontaine", "Quill", "Rinaldi", "Ferrer",
    "Adeyemi", "Lindqvist", "Thornbury", "Moreau",
)  # fmt: skip
_BIRTHPLACES: Final = (
    "Lyon, France", "Porto, Portugal", "Lagos, Nigeria", "Sapporo, Japan", "Dunedin, New Zealand",
    "Bergen, Norway", "Kraków, Poland", "Valparaíso, Chile", "Edinburgh, The United Kingdom",
    "Boston, Massachusetts, The United States", "Trieste, Italy", "Ghent, Belgium",
)  # fmt: skip
_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_ABSTRACT: Final = (
    "love", "courage", "kindness", "patience", "memory", "silence", "hope", "friendship", "wisdom",
    "imagination", "curiosity", "happiness", "doubt", "laughter", "grief", "time", "truth",
)  # fmt: skip
_THINGS: Final = (
    "door", "garden", "letter", "lantern", "journey", "book", "song", "river", "map", "promise",
    "bridge",
)  # fmt: skip
_VERBS: Final = (
    "listen", "forgive", "wander", "begin", "read", "remember", "laugh", "choose", "wait",
    "explore",
)  # fmt: skip
_GERUNDS: Final = (
    "listening", "forgiving", "wandering", "beginning", "reading", "remembering", "laughing",
)  # fmt: skip
_ADJECTIVES: Final = (
    "brave", "honest", "curious", "patient", "lonely", "gentle", "wise", "kind", "restless",
)  # fmt: skip
_SAYINGS: Final = (
    "{A} is not {b}; it is {c} that has learned to wait.",
    "Every {thing} begins with a single {thing2}.",
    "We do not {verb} because we are {adj}; we become {adj} because we {verb}.",
    "A {thing} without {a} is only a {thing2} with better manners.",
    "If you want to change the world, learn to {verb} first.",
    "{A} is the art of {gerund} when nobody is watching.",
    "I have never met a {thing} I could not learn something from, except perhaps my own.",
    "There is more {a} in a {thing} than in a hundred speeches.",
    "Keep {a} close and {b} closer; the rest will find its way home.",
    "The secret of {a} is {gerund} before you're ready.",
    "You can't {verb} the same {thing} twice, and that is the whole point.",
)  # fmt: skip
_TAGS: Final = (
    "love", "life", "inspirational", "humor", "books", "reading", "friendship", "truth", "courage",
    "hope", "wisdom", "simplicity", "change", "be-yourself", "deep-thoughts", "writing",
    "happiness", "time", "kindness", "learning",
)  # fmt: skip

_DOCUMENT: Final = """<!DOCTYPE html>
<html lang="en">
<head>
    <meta charset="UTF-8">
    <title>Quotes to Scrape</title>
</head>
<body>
    <div class="container">
        <div class="row header-box">
            <div class="col-md-8">
                <h1>
                    <a href="/" style="text-decoration: none">Quotes to Scrape</a>
                </h1>
            </div>
            <div class="col-md-4">
                <p>
                    <a href="/login">Login</a>
                </p>
            </div>
        </div>
{content}
    </div>
    <footer class="footer">
        <div class="container">
            <p class="text-muted">
                Quotes by: GoodReads.com
            </p>
            <p class="copyright">
                Made with <span class='zyte'>❤</span> by Zyte
            </p>
        </div>
    </footer>
</body>
</html>
"""
_QUOTE: Final = """    <div class="quote" itemscope itemtype="http://schema.org/CreativeWork">
        <span class="text" itemprop="text">{text}</span>
        <span>by <small class="author" itemprop="author">{author}</small>
        <a href="/author/{slug}">(about)</a>
        </span>
        <div class="tags">
            Tags:
            <meta class="keywords" itemprop="keywords" content="{keywords}" /    >
{tags}
        </div>
    </div>"""
_PAGE: Final = """    <div class="row">
    <div class="col-md-8">
{quotes}
    </div>
    <div class="col-md-4 tags-box">
        <h2>Top Ten tags</h2>
{top}
    </div>
    </div>"""
_AUTHOR: Final = """    <div class="author-details">
        <h3 class="author-title">{name}
        </h3>
        <p><strong>Born:</strong> <span class="author-born-date">{born}</span>
        <span class="author-born-location">{location}</span></p>
        <p><strong>Description:</strong></p>
        <div class="author-description">
        {description}
        </div>
    </div>"""
_LOGIN: Final = """    <form action="/login" method="post" accept-charset="utf-8">
        <div class="form-group">
            <label for="username">Username</label>
            <input type="text" class="form-control" id="username" name="username" />
        </div>
        <div class="form-group">
            <label for="username">Password</label>
            <input type="password" class="form-control" id="password" name="password" />
        </div>
        <input type="submit" value="Login" class="btn btn-primary" />
    </form>"""
_NOT_FOUND: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>404 Not Found</title></head>
<body><h1>404 Not Found</h1></body></html>
"""
_PREVIOUS: Final = (
    '            <li class="previous">\n                <a href="{href}">'
    '<span aria-hidden="true">&larr;</span> Previous</a>\n            </li>'
)
_NEXT: Final = (
    '            <li class="next">\n                <a href="{href}">'
    'Next <span aria-hidden="true">&rarr;</span></a>\n            </li>'
)
_TAG_ITEM: Final = """            <span class="tag-item">
            <a class="tag" style="font-size: {size}px" href="/tag/{tag}/">{tag}</a>
            </span>"""


@dataclass(frozen=True, slots=True)
class _Author:
    name: str
    born: str
    location: str
    description: str

    @property
    def slug(self) -> str:
        """The real site's author slug: ASCII letters and digits joined by hyphens."""
        ascii_name = unicodedata.normalize("NFKD", self.name).encode("ascii", "ignore").decode()
        return re.sub(r"[^A-Za-z0-9]+", "-", ascii_name).strip("-")


@dataclass(frozen=True, slots=True)
class _Quote:
    text: str  # including the curly quotes, as the page shows it
    author: _Author
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Collection:
    quotes: tuple[_Quote, ...]
    authors: dict[str, _Author]  # keyed by slug, in order of first appearance
    top_tags: tuple[tuple[str, int], ...]


_COLLECTION: Final = web.AppKey("collection", _Collection)


def _author(rng: random.Random, name: str) -> _Author:
    born = f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(1820, 1975)}"
    place = rng.choice(_BIRTHPLACES)
    description = (
        f"{name} was born in {place.split(',')[0]} and spent a long life writing about "
        f"{rng.choice(_ABSTRACT)} and {rng.choice(_ABSTRACT)}. Their letters are still read today."
    )
    return _Author(name, born, f"in {place}", description)


def _saying(rng: random.Random) -> str:
    a, b, c = rng.sample(_ABSTRACT, 3)
    thing, thing2 = rng.sample(_THINGS, 2)
    return rng.choice(_SAYINGS).format(
        A=a.capitalize(), a=a, b=b, c=c, thing=thing, thing2=thing2, verb=rng.choice(_VERBS),
        gerund=rng.choice(_GERUNDS), adj=rng.choice(_ADJECTIVES),
    )  # fmt: skip


def _generate(quote_count: int, seed: int) -> _Collection:
    """Create every quote, author and tag from ``seed``; the same arguments give the same site."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < min(18, max(1, quote_count // 5)):
        first, surname = rng.choice(_FIRST_NAMES), rng.choice(_SURNAMES)
        if rng.random() < 0.2:  # "J.K. Rowling" style, which the site slugs as "J-K-Rowling"
            first = f"{first[0]}.{rng.choice(string.ascii_uppercase)}."
        if f"{first} {surname}" not in names:
            names.append(f"{first} {surname}")
    people = [_author(rng, name) for name in names]
    # Every author gets a quote; the first few get many, as on the real site.
    byline = people[: min(quote_count, len(people))]
    byline += rng.choices(
        people, [len(people) - i for i in range(len(people))], k=quote_count - len(byline)
    )
    rng.shuffle(byline)
    texts: set[str] = set()
    quotes: list[_Quote] = []
    for author in byline:
        while (text := f"“{_saying(rng)}”") in texts:
            pass
        texts.add(text)
        tags = tuple(sorted(rng.sample(_TAGS, rng.choice((0, 1, 2, 2, 3, 3, 4, 5)))))
        quotes.append(_Quote(text, author, tags))
    counts = Counter(tag for q in quotes for tag in q.tags)
    return _Collection(
        quotes=tuple(quotes),
        authors={q.author.slug: q.author for q in quotes},
        top_tags=tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]),
    )


def expected_quotes(quote_count: int = 100, seed: int = 3) -> list[dict[str, object]]:
    """Return what a quotes.toscrape.com spider should extract from ``quotes_app(...)``.

    Returns:
        One dict per quote in page order: ``text`` (with its curly quotes, as ``span.text``
        reads), ``author`` and ``tags`` (a list of str).
    """
    quotes = _generate(quote_count, seed).quotes
    return [{"text": q.text, "author": q.author.name, "tags": list(q.tags)} for q in quotes]


def expected_authors(quote_count: int = 100, seed: int = 3) -> list[dict[str, object]]:
    """Return the author pages of ``quotes_app(quote_count, seed)`` in order of first quote.

    Returns:
        One dict per author: ``name``, ``born`` (``"March 14, 1879"``) and ``born_location``
        (``"in Ulm, Germany"``, with the site's leading "in").
    """
    authors = _generate(quote_count, seed).authors.values()
    return [{"name": a.name, "born": a.born, "born_location": a.location} for a in authors]


def _render_quotes(collection: _Collection, quotes: list[_Quote], number: int, base: str) -> str:
    """Render one page of ``quotes``; ``base`` is ``/`` or ``/tag/<tag>/``."""
    shown = quotes[(number - 1) * QUOTES_PER_PAGE : number * QUOTES_PER_PAGE]
    blocks = []
    if base != "/":
        tag = base.split("/")[2]
        blocks.append(f'    <h3>Viewing tag: <a href="/tag/{tag}/page/1/">{tag}</a></h3>')
    for q in shown:
        tags = "\n".join(
            f'            <a class="tag" href="/tag/{t}/page/1/">{t}</a>' for t in q.tags
        )
        blocks.append(_QUOTE.format(
            text=escape(q.text), author=escape(q.author.name), slug=q.author.slug,
            keywords=",".join(q.tags), tags=tags,
        ))  # fmt: skip
    if not shown:
        blocks.append("    No quotes found!")
    pager = []
    if shown and number > 1:
        pager.append(_PREVIOUS.format(href=f"{base}page/{number - 1}/"))
    if number * QUOTES_PER_PAGE < len(quotes):
        pager.append(_NEXT.format(href=f"{base}page/{number + 1}/"))
    blocks.append(
        '    <nav>\n        <ul class="pager">\n' + "\n".join(pager) + "\n        </ul>\n    </nav>"
    )
    top = "\n".join(
        _TAG_ITEM.format(size=28 - 2 * i, tag=tag) for i, (tag, _) in enumerate(collection.top_tags)
    )
    return _DOCUMENT.format(content=_PAGE.format(quotes="\n".join(blocks), top=top))


async def _quotes(request: web.Request) -> web.Response:
    collection = request.app[_COLLECTION]
    number = int(request.match_info.get("number", "1"))
    if tag := request.match_info.get("tag"):
        quotes = [q for q in collection.quotes if tag in q.tags]
        return html_response(_render_quotes(collection, quotes, number, f"/tag/{tag}/"))
    return html_response(_render_quotes(collection, list(collection.quotes), number, "/"))


async def _author_page(request: web.Request) -> web.Response:
    if (author := request.app[_COLLECTION].authors.get(request.match_info["slug"])) is None:
        raise web.HTTPNotFound
    details = _AUTHOR.format(
        name=escape(author.name), born=author.born, location=escape(author.location),
        description=escape(author.description),
    )  # fmt: skip
    return html_response(_DOCUMENT.format(content=details))


async def _login(request: web.Request) -> web.Response:
    return html_response(_DOCUMENT.format(content=_LOGIN))


async def _robots(request: web.Request) -> web.Response:
    return web.Response(text="User-agent: *\nAllow: /\n")


def quotes_app(quote_count: int = 100, seed: int = 3) -> web.Application:
    """Build the offline quotes.toscrape.com: same URLs and markup as the real site.

    Quotes are generated once per app from ``seed`` and pages are rendered per request.
    ``expected_quotes`` and ``expected_authors`` list what a spider should extract. As on the
    real site, a page number past the end answers 200 with "No quotes found!" and no pager.

    Args:
        quote_count: Number of quotes; pages show 10 each.
        seed: Seed for the generator.

    Returns:
        An aiohttp application serving ``/``, ``/page/N/``, ``/author/<Slug>``,
        ``/tag/<tag>/``, ``/tag/<tag>/page/N/``, ``/login`` and ``/robots.txt``.
    """
    app = web.Application(middlewares=[html_not_found(_NOT_FOUND)])
    app[_COLLECTION] = _generate(quote_count, seed)
    number = "{number:[1-9][0-9]*}"
    tag = "{tag:[a-z0-9-]+}"
    app.router.add_get("/", _quotes)
    app.router.add_get(f"/page/{number}/", _quotes)
    app.router.add_get(f"/tag/{tag}/", _quotes)
    app.router.add_get(f"/tag/{tag}/page/{number}/", _quotes)
    app.router.add_get("/author/{slug:[A-Za-z0-9-]+}", _author_page)
    app.router.add_get("/author/{slug:[A-Za-z0-9-]+}/", _author_page)
    app.router.add_get("/login", _login)
    app.router.add_get("/robots.txt", _robots)
    return app
