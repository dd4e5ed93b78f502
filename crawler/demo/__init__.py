"""The bundled offline demo sites: a book catalogue (`catalogue`) and a quotes site
(`quotes`), built from shared page parts (`pages`) and served on loopback (`serve`).

Enters: nothing but seeds and sizes (the sites are generated, never fetched). Leaves: aiohttp
applications for the demo and the tests, and the items a correct spider should find on them
(`expected_books`, `expected_quotes`, `expected_authors`). Used by the `crawler demo` and
`crawler serve-demo` commands and by the tests.
"""

from __future__ import annotations

from crawler.demo.catalogue import catalogue_app, expected_books
from crawler.demo.quotes import expected_authors, expected_quotes, quotes_app

__all__ = ["catalogue_app", "expected_authors", "expected_books", "expected_quotes", "quotes_app"]
