"""Link rules: a `CrawlSpider` follows the links its `rules` allow, so that a whole-site
spider is ten lines.

```python
class ShopSpider(CrawlSpider):
    name = "shop"
    start_urls = ["https://shop.example/"]
    allowed_domains = ["shop.example"]
    rules = (
        Rule(allow=(r"/product/\\d+$",), callback="parse_product"),
        Rule(deny=(r"/cart", r"[?&]sort="), restrict_css=("nav", ".pagination")),
    )

    async def parse_product(self, response: Response) -> AsyncIterator[Item]:
        yield {"name": text_of(response.css_first("h1")), "url": response.url}
```

Each link of a page (`response.links()`) goes to the first rule that *extracts* it: the link
matches one of the rule's `allow` regexes (any link when there are none) and none of its
`deny` ones, its host is one of `allow_domains` or a subdomain (any host when empty) and not
one of `deny_domains`, and, with `restrict_css`, it appears inside one of those regions.

An extracted link is requested with the callback `parse_by_rule`. When its response arrives,
the page's rule (the first whose patterns and domains match its URL) runs the rule's
`callback`, if any; if the rule `follow`s (by default: when it has no callback, as in
Scrapy), the rules are applied to that page's links in turn.

A link that no rule's patterns and domains match is yielded as `Refused(url)` and recorded
in `requests` as skipped with reason `rule`. A link that matches a rule but lies outside its
`restrict_css` regions is simply not followed from this page, since another page may have it
in the right place.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, final

from crawler.errors import SkipReason, SpiderError
from crawler.links import extract_links_in, host_of, normalise_domain
from crawler.spider.base import Spider, callback_of
from crawler.spider.http import Item, Request, RequestBatch, Response

__all__ = ["CrawlSpider", "Refused", "Rule"]


@final
@dataclass(frozen=True, slots=True)
class Refused:
    """A link a spider chose not to follow; yield it from a callback and it is recorded in
    `requests` as skipped with `reason` (the frontier does the recording)."""

    url: str
    reason: SkipReason = SkipReason.RULE


_RuleOutput: TypeAlias = "Item | Request | RequestBatch | Refused"
"""What a CrawlSpider's callbacks yield: a callback's own output, and the rules' links."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Which links of a page to follow, and which spider method parses them.

    Args:
        allow: regexes (`re.search`); a link must match one (every link does when empty).
        deny: regexes; a link matching any is not extracted by this rule.
        allow_domains: hosts (subdomains included) the link must be on; empty: any host.
        deny_domains: hosts (subdomains included) the link must not be on.
        restrict_css: CSS selectors of the page regions links are taken from; empty: all.
        callback: the name of the spider method that parses the linked pages, or None.
        follow: whether to apply the rules to the linked pages' links too; by default,
            True when there is no callback and False when there is one.
    """

    allow: Sequence[str] = ()
    deny: Sequence[str] = ()
    allow_domains: Sequence[str] = ()
    deny_domains: Sequence[str] = ()
    restrict_css: Sequence[str] = ()
    callback: str | None = None
    follow: bool | None = None

    def __post_init__(self) -> None:
        for name in ("allow", "deny", "allow_domains", "deny_domains", "restrict_css"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise SpiderError(f"Rule({name}=...) takes a tuple of strings: ({value!r},)")
        for pattern in (*self.allow, *self.deny):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise SpiderError(f"Rule: bad regex {pattern!r}: {exc}") from None

    @property
    def follows(self) -> bool:
        """Whether the rules are applied to the links of pages this rule extracted."""
        return self.callback is None if self.follow is None else self.follow

    def matches(self, url: str) -> bool:
        """Whether `url` passes this rule's patterns and domains (`restrict_css` aside)."""
        if self.allow and not any(re.search(pattern, url) for pattern in self.allow):
            return False
        if any(re.search(pattern, url) for pattern in self.deny):
            return False
        if self.allow_domains or self.deny_domains:
            host = host_of(url)
            if self.allow_domains and not _on_any(host, self.allow_domains):
                return False
            if _on_any(host, self.deny_domains):
                return False
        return True


def _on_any(host: str, domains: Sequence[str]) -> bool:
    for domain in domains:
        bare = normalise_domain(domain)
        if host == bare or host.endswith("." + bare):
            return True
    return False


class CrawlSpider(Spider):
    """A spider that follows links by `rules` (see the module docstring).

    Start URLs are parsed by `parse`: `parse_start_url` (override it to extract items from
    the start pages; it yields nothing by default), then the rules. Define `rules` and the
    callbacks they name; `parse` itself should not be overridden.
    """

    rules: ClassVar[Sequence[Rule]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for rule in cls.rules:
            if not isinstance(rule, Rule):
                raise SpiderError(f"{cls.__qualname__}.rules: expected Rule, got {rule!r}")
            if rule.callback is None:
                continue
            method = getattr(cls, rule.callback, None)
            if method is None or not inspect.isasyncgenfunction(method):
                raise SpiderError(
                    f"{cls.__qualname__}.rules: callback {rule.callback!r} is not an async "
                    "generator method of the spider"
                )

    async def parse(self, response: Response) -> AsyncIterator[_RuleOutput]:
        """Parse a start page: `parse_start_url`, then follow the rules."""
        async for output in self.parse_start_url(response):
            yield output
        for link in self.follow_rules(response):
            yield link

    async def parse_start_url(
        self, response: Response
    ) -> AsyncIterator[Item | Request | RequestBatch]:
        """Extract items from a start page; yields nothing unless overridden."""
        nothing: tuple[Item | Request | RequestBatch, ...] = ()
        for output in nothing:
            yield output

    async def parse_by_rule(self, response: Response) -> AsyncIterator[_RuleOutput]:
        """Parse a page a rule extracted: the rule's callback, then its links if it follows."""
        rule = self.rule_for(response.request.url)
        if rule is not None and rule.callback is not None:
            async for output in callback_of(self, rule.callback)(response):
                yield output
        if rule is None or rule.follows:
            for link in self.follow_rules(response):
                yield link

    def rule_for(self, url: str) -> Rule | None:
        """Return the first rule whose patterns and domains match `url`."""
        return next((rule for rule in self.rules if rule.matches(url)), None)

    def follow_rules(self, response: Response) -> Iterator[Request | Refused]:
        """Yield a request for every link of the page a rule extracts, in page order, and a
        `Refused` for every link that no rule's patterns and domains match."""
        regions: dict[int, set[str]] = {}
        for url in response.links():
            matched = False
            for index, rule in enumerate(self.rules):
                if not rule.matches(url):
                    continue
                matched = True
                if rule.restrict_css and url not in self._region_links(response, index, regions):
                    continue
                yield response.follow(url, callback=self.parse_by_rule)
                break
            else:
                if not matched:
                    yield Refused(url)

    def _region_links(self, response: Response, index: int, cache: dict[int, set[str]]) -> set[str]:
        """The links inside rule `index`'s `restrict_css` regions (computed once per page)."""
        if index not in cache:
            selectors = self.rules[index].restrict_css
            nodes = [node for selector in selectors for node in response.css(selector)]
            cache[index] = set(extract_links_in(nodes, response.tree, response.url))
        return cache[index]
