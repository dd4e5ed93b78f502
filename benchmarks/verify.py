"""Check a crawler's items against the site manifest: every page once, every field right."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.site import Manifest, PageRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """Whether a run's output is complete and correct; only correct runs get speed figures."""

    ok: bool
    reason: str = ""
    """Why the run is not ok, or remarks on an ok run (such as duplicate items)."""


def _mismatch(item: Mapping[str, object], expected: PageRecord) -> str:
    """Describe the first field of ``item`` that differs from ``expected``, or return ''."""
    title, price, rating = item.get("title"), item.get("price"), item.get("rating")
    if title != expected.title:
        return f"title {title!r} != {expected.title!r}"
    if not isinstance(price, int | float) or not math.isclose(price, expected.price):
        return f"price {price!r} != {expected.price!r}"
    if isinstance(rating, bool) or rating != expected.rating:
        return f"rating {rating!r} != {expected.rating!r}"
    return ""


def check_items(items: Sequence[Mapping[str, object]], manifest: Manifest) -> Verdict:
    """Compare ``items`` (dicts with title, price, sku, rating) with the manifest's products."""
    expected = {page.sku: page for page in manifest.pages}
    counts = Counter(str(item.get("sku")) for item in items)
    missing = [page for sku, page in expected.items() if sku not in counts]
    unexpected = [sku for sku in counts if sku not in expected]
    wrong = [
        f"{item.get('sku')}: {problem}"
        for item in items
        if str(item.get("sku")) in expected
        and (problem := _mismatch(item, expected[str(item.get("sku"))]))
    ]
    problems = []
    if missing:
        problems.append(f"missed {len(missing)} of {len(expected)} pages (e.g. /{missing[0].path})")
    if wrong:
        problems.append(f"wrong fields in {len(wrong)} items (e.g. {wrong[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} items with unknown SKUs (e.g. {unexpected[0]!r})")
    if problems:
        return Verdict(ok=False, reason="; ".join(problems))
    duplicates = sum(count - 1 for count in counts.values())
    return Verdict(ok=True, reason=f"{duplicates} duplicate items" if duplicates else "")


def check_fetch_only(pages: int, errors: int, manifest: Manifest) -> Verdict:
    """Judge a run that yields no items (the fetch floor) by its page and error counts."""
    if errors or pages != len(manifest.pages):
        return Verdict(
            ok=False, reason=f"fetched {pages} of {len(manifest.pages)} pages, {errors} errors"
        )
    return Verdict(ok=True)
