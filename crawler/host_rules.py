"""Per-site settings: host patterns, and which pattern's values apply to a host.

A pattern is a host (`api.example.com`, `127.0.0.1`, `[::1]`), `*.` and a domain for every
host below it at any depth (`*.example.com` matches `a.b.example.com`, not `example.com`
itself), or `*` for every host. Patterns are normalised like the hosts they are compared
with: lowercase, internationalised names IDNA-encoded, IPv6 without brackets.

For each setting, the most specific matching pattern that sets it wins: a host over any
wildcard, a longer wildcard over a shorter one, any pattern over `*`. The same pattern in
both layers: the spider's `host_settings` over config.toml's `[hosts]`, as for the crawl-wide
layers. The values are validated by crawler.settings; this module only matches hosts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, final

from yarl import URL

from crawler.errors import ConfigError

__all__ = [
    "HostRule",
    "HostSource",
    "host_pattern",
    "largest",
    "matching_values",
    "pattern_matches",
]

HostSource = Literal["config.toml", "spider"]

_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_EXPECTED: Final = "a host (api.example.com), *.example.com for its subdomains, or * for all"


@final
@dataclass(frozen=True, slots=True)
class HostRule:
    """The per-host values one pattern sets, and where they were written."""

    pattern: str
    """The normalised pattern (see `host_pattern`)."""
    values: dict[str, object]
    """Setting name -> validated value."""
    source: HostSource

    @property
    def label(self) -> str:
        """Where the rule was written, as `crawler settings --host` shows it."""
        if self.source == "spider":
            return f"spider host_settings[{self.pattern!r}]"
        return f'config.toml [hosts."{self.pattern}"]'

    def specificity(self) -> tuple[int, int, int]:
        """Sort key: a host beats any wildcard, a longer wildcard a shorter one, the spider
        config.toml."""
        layer = 1 if self.source == "spider" else 0
        if self.pattern == "*":
            return (0, 0, layer)
        if self.pattern.startswith("*."):
            return (1, self.pattern.count("."), layer)
        return (2, 0, layer)


def host_pattern(text: object, source: str) -> str:
    """Return the normalised form of a host pattern, or raise one `ConfigError` line."""
    if not isinstance(text, str):
        raise ConfigError(f"{source}: host pattern {text!r} must be a string")
    if text == "*":
        return text
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if name.startswith("[") and name.endswith("]") and not wildcard:
        name = name[1:-1]
    try:
        return ("*." if wildcard else "") + _normal_host(name, allow_ip=not wildcard)
    except ValueError as exc:
        raise ConfigError(f"{source}: host pattern {text!r} {exc}; expected {_EXPECTED}") from None


def _normal_host(name: str, *, allow_ip: bool) -> str:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if not allow_ip:
            raise ValueError("puts a wildcard before an IP address")
        return address.compressed
    if not name or any(c.isspace() or c in "/:@?#*[]\\%" for c in name):
        raise ValueError("is not a host name")
    try:
        encoded = URL.build(scheme="http", host=name).raw_host or ""
    except (ValueError, UnicodeError):
        raise ValueError("is not a valid host name") from None
    labels = encoded.split(".")
    if len(encoded) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("is not a valid host name")
    return encoded


def pattern_matches(pattern: str, host: str) -> bool:
    """Whether a normalised pattern covers `host` (as `crawler.links.host_of` gives it)."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def matching_values(rules: Iterable[HostRule], host: str) -> dict[str, tuple[object, str]]:
    """For each setting the rules matching `host` set: the winning value and its label."""
    found = sorted(
        (rule for rule in rules if pattern_matches(rule.pattern, host)),
        key=HostRule.specificity,
    )
    chosen: dict[str, tuple[object, str]] = {}
    for rule in found:  # least specific first: later ones overwrite
        for name, value in rule.values.items():
            chosen[name] = (value, rule.label)
    return chosen


def largest(rules: Iterable[HostRule], name: str, default: int) -> int:
    """The largest value any host may have of an int setting (`default` for the others):
    what a crawl-wide bound such as a connection pool must leave room for."""
    values = (rule.values.get(name, default) for rule in rules)
    return max([default, *(v for v in values if isinstance(v, int))])


def host_tables(tables: object, source: HostSource) -> Mapping[str, Mapping[str, object]]:
    """Check the shape of a layer's per-host tables: pattern -> table of settings."""
    where = "config.toml [hosts]" if source == "config.toml" else "spider host_settings"
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{where} must map host patterns to tables of settings")
    for pattern, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: {pattern!r} must be a table of settings, got {table!r}")
    return tables
