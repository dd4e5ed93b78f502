"""The bundled offline demo sites."""

from __future__ import annotations

from crawler.demo.catalogue import catalogue_app, expected_books
from crawler.demo.quotes import expected_authors, expected_quotes, quotes_app

__all__ = ["catalogue_app", "expected_authors", "expected_books", "expected_quotes", "quotes_app"]
