"""Generate the deterministic benchmark site: linked product pages plus a manifest.

Run ``python benchmarks/site.py --pages 10000 --out DIR``. Page 0 is ``DIR/index.html``, page i is
``DIR/p/i.html``; every page carries one product block, and ``DIR/manifest.json`` lists each page's
path and product fields so that crawl results can be checked. The same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import html
import json
import random
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

DEFAULT_PAGES: Final = 10_000
MANIFEST_NAME: Final = "manifest.json"
OFFSITE: Final = "http://offsite.invalid"


def _split(words: str, separator: str = "|") -> tuple[str, ...]:
    return tuple(words.split(separator))


_WORDS: Final = _split(
    "the quality of this product is excellent and it arrived quickly in sturdy packaging with "
    "clear instructions for assembly use care cleaning storage warranty support we tested it "
    "daily for several weeks at home in the kitchen garden office workshop and found it reliable "
    "durable comfortable light heavy compact generous solid smooth quiet bright warm soft strong "
    "value price shipping return customer service design colour size weight material finish "
    "handle lid base cover strap button switch battery cable charger manual box bag case "
    "recommend would buy again gift family friends children adults beginners experts outdoor "
    "indoor travel camping cooking baking reading cleaning repair music sport fitness summer "
    "winter morning evening weekend holiday easy hard simple better best good great fine nice",
    " ",
)
_ADJECTIVES: Final = _split(
    "Classic|Compact|Deluxe|Rustic|Modern|Vintage|Portable|Premium|Everyday|Nordic|Crème|Café|"
    "Über|Smart|Handmade|Organic"
)
_MATERIALS: Final = _split("Oak|Steel|Ceramic|Linen|Bamboo|Copper|Glass|Wool|Leather|Cotton")
_NOUNS: Final = _split(
    "Kettle|Lamp|Backpack|Mug|Chair|Blanket|Notebook|Grinder|Clock|Teapot|Desk|Speaker|Vase|"
    "Skillet|Umbrella|Bottle|Salt & Pepper Mill"
)
_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}"
    "header,footer{background:#203040;color:#eee;padding:1rem 2rem}"
    "nav a{color:#cde;margin-right:1rem;text-decoration:none}"
    "main{max-width:60rem;margin:0 auto;padding:1rem 2rem}"
    ".product{border:1px solid #ccd;padding:1rem;border-radius:.5rem;background:#fff}"
    ".price{font-size:1.5rem;font-weight:700;color:#a30}.sku{color:#666;margin-left:1rem}"
    ".rating{margin-left:1rem}.related li{display:inline-block;margin:.2rem .6rem}"
    "table.specs td,table.specs th{border-bottom:1px solid #ddd;padding:.3rem .6rem}"
    ".review{border-left:3px solid #cde;padding-left:1rem;margin:1rem 0}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PageRecord:
    """One generated page and the product it shows."""

    path: str
    """Path below the site root, e.g. ``index.html`` or ``p/123.html``."""
    title: str
    price: float
    sku: str
    rating: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """What was generated: every page with its product fields, plus totals."""

    seed: int
    pages: tuple[PageRecord, ...]
    total_bytes: int
    internal_links: int
    offsite_links: int

    def save(self, path: Path) -> None:
        """Write the manifest as JSON."""
        data = asdict(self)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read a manifest written by :meth:`save`."""
        data = json.loads(path.read_text(encoding="utf-8"))
        pages = tuple(PageRecord(**page) for page in data.pop("pages"))
        return cls(pages=pages, **data)


def page_path(index: int) -> str:
    """Return the site path of page ``index`` (page 0 is the home page)."""
    return "index.html" if index == 0 else f"p/{index}.html"


def _href(rng: random.Random, source: int, target: int) -> str:
    """Write a link from page ``source`` to page ``target`` in one of the forms real sites use."""
    form = rng.random()
    if form < 0.4:
        return "/" + page_path(target)
    if form < 0.75:  # relative to the source page's directory
        if source == 0:
            return page_path(target)
        if target == 0:
            return "../index.html"
        return rng.choice((f"../p/{target}.html", f"{target}.html"))
    return f"/{page_path(target)}#{rng.choice(('reviews', 'specs', 'top'))}"


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choices(_WORDS, k=words))
    return text[0].upper() + text[1:] + "."


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng, rng.randint(8, 20)) for _ in range(rng.randint(3, 6)))


def _product(rng: random.Random, index: int) -> PageRecord:
    title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_MATERIALS)} {rng.choice(_NOUNS)} {index}"
    return PageRecord(
        path=page_path(index),
        title=title,
        price=rng.randint(99, 99_999) / 100,
        sku=f"SKU-{index:06d}",
        rating=rng.randint(1, 5),
    )


def _targets(rng: random.Random, index: int, pages: int) -> list[int]:
    """Pick the internal link targets of a page: the next page (so all are reachable) and others."""
    targets = [(index + 1) % pages, 0, index]  # next, home, self (the "#reviews" tab link)
    targets += rng.choices(range(pages), k=18)
    targets += rng.choices(targets, k=4)  # duplicates, as on real pages
    return targets


def render_page(index: int, product: PageRecord, targets: list[int], rng: random.Random) -> str:
    """Render page ``index``: boilerplate, its product block, text, and links to ``targets``."""
    hrefs = [_href(rng, index, target) for target in targets]
    nav = hrefs[:3]
    related = list(zip(hrefs[3:], targets[3:], strict=True))
    offsite = [f"{OFFSITE}/share?page={index}", f"{OFFSITE}/", f"{OFFSITE}/brand/{index % 97}"]
    title = html.escape(product.title)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f"<title>{title} | Bench Shop</title>\n",
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<style>{_STYLE}</style>\n</head>\n<body>\n",
        '<header id="top"><nav>',
        f'<a href="{nav[1]}">Home</a><a href="{nav[0]}">Next product</a>',
        '<a href="#reviews">Reviews</a><a href="mailto:shop@offsite.invalid">Contact</a>',
        f'<a href="{offsite[1]}">Our brand</a></nav></header>\n<main>\n',
        '<div class="product">',
        f'<h1 class="title">{title}</h1>',
        f'<span class="price">{product.price:.2f}</span>',
        f'<span class="sku">{product.sku}</span>',
        f'<span class="rating">{product.rating}</span>',
        "</div>\n",
        f'<p class="share"><a href="{offsite[0]}">Share</a> · ',
        f'<a href="{nav[2]}">Permalink</a></p>\n',
    ]
    parts += [f"<p>{_paragraph(rng)}</p>\n" for _ in range(4)]
    parts.append('<h2 id="specs">Specifications</h2>\n<table class="specs">\n')
    parts += [
        f"<tr><th>{rng.choice(_WORDS).title()}</th><td>{_sentence(rng, 4)}</td></tr>\n"
        for _ in range(8)
    ]
    parts.append('</table>\n<h2>Related products</h2>\n<ul class="related">\n')
    parts += [f'<li><a href="{href}">Product {target}</a></li>\n' for href, target in related]
    parts.append('</ul>\n<h2 id="reviews">Reviews</h2>\n')
    target_size = rng.randint(17_000, 23_000)
    size = sum(len(part) for part in parts)
    while size < target_size:
        review = (
            f'<div class="review"><p><b>{rng.choice(_WORDS).title()}</b> rated '
            f"{rng.randint(1, 5)}/5</p><p>{_paragraph(rng)}</p></div>\n"
        )
        parts.append(review)
        size += len(review)
    parts.append(
        f'</main>\n<footer><a href="/index.html">Home</a> · <a href="{offsite[2]}">Partner</a>'
        " · © Bench Shop</footer>\n</body>\n</html>\n"
    )
    return "".join(parts)


def _check_reachable(links: list[list[int]]) -> None:
    """Raise if some page cannot be reached from the home page (a generator bug)."""
    seen = {0}
    todo = deque([0])
    while todo:
        for target in links[todo.popleft()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    if len(seen) != len(links):
        raise AssertionError(f"{len(links) - len(seen)} pages unreachable from index.html")


def generate_site(out: Path, pages: int = DEFAULT_PAGES, seed: int = 1) -> Manifest:
    """Write ``pages`` HTML pages and ``manifest.json`` under ``out``, determined by ``seed``.

    Every page is reachable from ``/index.html``: page i always links to page i+1.

    Returns:
        The manifest that was written to ``out / "manifest.json"``.
    """
    if pages < 2:
        raise ValueError("need at least 2 pages")
    (out / "p").mkdir(parents=True, exist_ok=True)
    records: list[PageRecord] = []
    links: list[list[int]] = []
    total_bytes = 0
    for index in range(pages):
        rng = random.Random(f"{seed}:{index}")
        product = _product(rng, index)
        targets = _targets(rng, index, pages)
        data = render_page(index, product, targets, rng).encode()
        (out / product.path).write_bytes(data)
        records.append(product)
        links.append(targets)
        total_bytes += len(data)
    _check_reachable(links)
    internal = sum(len(targets) + 1 for targets in links)  # + the footer's home link
    manifest = Manifest(
        seed=seed,
        pages=tuple(records),
        total_bytes=total_bytes,
        internal_links=internal,
        offsite_links=4 * pages,  # three offsite.invalid links and one mailto: per page
    )
    manifest.save(out / MANIFEST_NAME)
    return manifest


def main() -> None:
    """Command line: generate the site into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES, help="number of pages")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same site)")
    args = parser.parse_args()
    manifest = generate_site(args.out, args.pages, args.seed)
    print(
        f"wrote {len(manifest.pages)} pages, {manifest.total_bytes / 1e6:.1f} MB, "
        f"{manifest.internal_links} internal links to {args.out}"
    )


if __name__ == "__main__":
    main()
