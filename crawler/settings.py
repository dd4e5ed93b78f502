"""Every crawl setting, documented once, and the layered loading that validates them.

Layers, lowest first: built-in defaults < `config.toml` (`[crawler]` table) < the spider's
`settings` < command-line flags; bad settings raise `ConfigError` naming key and layer.
Per-site settings (`PER_HOST_SETTINGS`) may be set per host pattern (crawler.host_rules);
`Settings.for_host(host)` gives one host's: a pure function of the host, in a bounded cache.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, final

from crawler.durations import parse_duration
from crawler.errors import ConfigError
from crawler.host_rules import HostRule, HostSource, host_pattern, host_tables, matching_values
from crawler.setting_types import convert, hint_name
from crawler.version import __version__

__all__ = [
    "DEFAULT_USER_AGENT",
    "PER_HOST_SETTINGS",
    "LoadedSettings",
    "Settings",
    "describe_settings",
    "load_settings",
]

DEFAULT_USER_AGENT: Final = f"crawler/{__version__} (Python web crawler; obeys robots.txt)"


@final
@dataclass(frozen=True, kw_only=True)
class Settings:
    """The effective settings of one crawl. Build it with `load_settings`, not by hand."""

    concurrency: int = 16
    """Requests in flight across all hosts (the size of the worker pool and the fetch semaphore)."""

    concurrency_per_host: int = 8
    """Requests in flight to any one host: a hard cap (autothrottle may use fewer). 8, as in
    Scrapy, fetches a fast site in parallel without one crawl looking like an attack."""

    delay_per_host: float = 0.0
    """Least seconds between the starts of two requests to the same host (0 = no fixed delay:
    autothrottle and robots.txt `Crawl-delay` set it); a larger `Crawl-delay` wins."""

    randomize_delay: bool = False
    """Multiply each host's delay by a random factor between 0.5 and 1.5 for each request."""

    request_timeout: float = 30.0
    """Seconds one attempt may take in total: connecting, headers and the whole body."""

    connect_timeout: float = 10.0
    """Seconds to wait for a TCP connection."""

    max_size: int = 10 * 1024 * 1024
    """Largest decoded (decompressed) body in bytes; larger responses fail as `too_large`."""

    max_retries: int = 3
    """Extra attempts after a retryable failure (timeout, connection error, `retry_statuses`)."""

    retry_statuses: list[int] = field(default_factory=lambda: [429, 500, 502, 503, 504])
    """HTTP statuses that are retried with exponential backoff and jitter."""

    backoff_base: float = 0.5
    """Seconds before the first retry; doubles with each attempt (plus jitter)."""

    backoff_max: float = 30.0
    """Longest backoff between two attempts, in seconds."""

    retry_after_max: float = 600.0
    """Longest `Retry-After` honoured, in seconds; longer values are capped to this."""

    retry_after_inline: float = 3.0
    """Retry waits up to this many seconds happen in the worker (holding no fetch permit);
    longer ones send the request back to the frontier with a not-before time."""

    max_redirects: int = 10
    """Redirect hops followed per request before failing with kind `redirect`."""

    allow_private_addresses: bool = False
    """Let the crawl connect to internal addresses: loopback, private (RFC 1918), link-local,
    carrier-grade NAT, unique-local, multicast and reserved. Off by default, so that a link, a
    redirect or a DNS answer cannot point the crawler at the network it runs in: such a
    request fails with kind `private_address`, unless the crawl's start URLs resolve to the
    same class of address (a crawl started on 127.0.0.1 may fetch loopback). Every new
    connection is checked, after DNS."""

    max_depth: int = 0
    """Deepest link depth followed from a start URL (start URLs are depth 0; 0 = no limit)."""

    max_pages: int = 0
    """Most requests admitted for fetching in the whole crawl (0 = no limit)."""

    max_url_length: int = 2083
    """Longest URL admitted, in characters; longer ones are skipped as `url_too_long`."""

    user_agent: str = DEFAULT_USER_AGENT
    """The User-Agent header sent with every request, also the name robots.txt groups are
    matched against. The default names this crawler and its version, so that site owners can
    tell who is visiting."""

    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers sent with every request (a request's own headers win); per host, to
    send a token only to the API that wants it. On the command line, a JSON object."""

    parse_content_types: list[str] = field(
        default_factory=lambda: ["text/html", "application/xhtml+xml"]
    )
    """Content types handed to spider callbacks; other responses are recorded, not parsed."""

    store_body: bool = False
    """Store each page's body (gzip-compressed) in `pages.body`."""

    store_links: bool = True
    """Record every page's outgoing links in the `links` table."""

    order: Literal["bfs", "dfs"] = "bfs"
    """Frontier order within a priority: `bfs` (first in first out) or `dfs` (last in first out)."""

    queue_window: int = 2000
    """Most requests held in memory at once; the rest wait in the SQLite frontier."""

    write_batch_size: int = 500
    """Most page results written in one database transaction."""

    write_interval: float = 0.25
    """Longest time, in seconds, a finished page waits before its transaction is committed."""

    progress_interval: float = 10.0
    """Seconds between progress log lines when not writing to a terminal."""
    stats_interval: float = 2.0
    """Seconds between two samples of `stats_ts` and `host_stats` (`crawler dashboard`); 0: none."""

    obey_robots: bool = True
    """Fetch each host's robots.txt once, skip the URLs it disallows for `user_agent` (reason
    `robots`) and honour its `Crawl-delay`. On by default, because RFC 9309 asks crawlers to
    and sites ban those that do not. A robots.txt that answers 4xx allows everything."""

    robots_error_cooldown: float = 600.0
    """Seconds a host whose robots.txt failed (5xx, 429, timeout or connection error, after
    retries) is treated as disallowing everything before robots.txt is fetched again; Google
    does the same, because a failing robots.txt may hide a "keep out"."""

    crawl_delay_max: float = 30.0
    """Longest robots.txt `Crawl-delay` honoured, in seconds; longer ones are capped to this
    (as Nutch and StormCrawler do), so one site cannot stall a crawl for hours."""

    autothrottle: bool = True
    """Adapt each host's delay and concurrency to how it answers: the delay follows its
    response time divided by `autothrottle_target_concurrency`; a 429 or 503 halves its
    concurrency and at least doubles its delay, a timeout or connection error halves its
    concurrency; successes speed it back up. On by default so that a slow site is not
    overloaded and a fast one is not held back."""

    autothrottle_target_concurrency: float = 1.0
    """Requests autothrottle aims to have in flight to each host on average (Scrapy's default:
    about one visitor clicking as fast as the site answers); `concurrency_per_host` still caps."""

    autothrottle_max_delay: float = 60.0
    """Longest delay, in seconds, autothrottle may put between two requests to one host."""

    max_pages_per_host: int = 0
    """Most requests admitted for fetching from any one host (0 = no limit), counted for every
    process sharing the file; more are skipped as `max_pages_per_host`. A backstop against
    spider traps (endless calendars, session ids) that depth and URL length do not stop; a
    resume with a larger limit fetches them."""

    blocking_warning: float = 0.5
    """Seconds a spider callback may run without giving the event loop back (`time.sleep`,
    blocking I/O, heavy CPU) before a WARNING names it and an `errors` row of kind `blocking`
    records it (0 = no check); while it runs, no other request makes progress."""

    shutdown_grace: float = 10.0
    """Seconds in-flight requests get to finish after the first Ctrl-C."""

    refresh_after: float = 0.0
    """Re-crawl: a run on an existing crawl fetches again, conditionally, the pages last
    fetched longer ago than this (seconds, or a duration: `"12h"`, `"7d"`; 0 = never), with
    their callbacks; unchanged pages (304, or the same body) are not parsed again."""

    database: str = ""
    """Where `crawler crawl` stores the crawl without `-o`: a file path, or a PostgreSQL URL
    that workers anywhere share ("" = `<spider>.db`; stored in `crawls` without password)."""

    host_rules: tuple[HostRule, ...] = ()
    """Per-site values, from config.toml `[hosts."pattern"]` tables and the spider's
    `host_settings` (see Per-site settings); `for_host` applies them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_per_host", {})

    def for_host(self, host: str) -> Settings:
        """The settings that apply to `host` (as `crawler.links.host_of` gives it): these,
        with the values of the most specific matching host patterns."""
        if not self.host_rules:
            return self
        cache: dict[str, Settings] = self._per_host  # type: ignore[attr-defined]
        found = cache.get(host)
        if found is None:
            if len(cache) >= _HOST_CACHE_SIZE:
                cache.clear()
            chosen = matching_values(self.host_rules, host)
            values: dict[str, Any] = {name: value for name, (value, _) in chosen.items()}
            found = dataclasses.replace(self, **values)
            cache[host] = found
        return found

    def sets_per_host(self, name: str) -> bool:
        """Whether any host pattern sets `name` (if not, `for_host` never changes it)."""
        return any(name in rule.values for rule in self.host_rules)


PER_HOST_SETTINGS: Final = tuple(
    """concurrency_per_host delay_per_host randomize_delay autothrottle
    autothrottle_target_concurrency autothrottle_max_delay obey_robots robots_error_cooldown
    crawl_delay_max user_agent headers request_timeout connect_timeout max_pages_per_host
    refresh_after""".split()  # noqa: SIM905 - four lines instead of fifteen
)
"""The settings a host pattern may set: how a host is fetched, not how the crawl runs."""
_HOST_CACHE_SIZE: Final = 4096


SettingsSource = Literal["default", "config.toml", "spider", "command line"]


@final
@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Settings together with the layer that set each one (for `crawler settings`)."""

    settings: Settings
    sources: Mapping[str, SettingsSource]


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


@functools.cache
def describe_settings() -> dict[str, str]:
    """Return each setting's documentation, read from the attribute docstrings above."""
    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]  # the class definition
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def type_name(name: str) -> str:
    """Return a readable name of a setting's type, e.g. `int` or `list[int]`."""
    return hint_name(_field_types()[name])


def _convert(name: str, value: object, source: str) -> object:
    if name in _DURATIONS:
        if (seconds := parse_duration(value)) is None:
            raise ConfigError(f"{source}: setting {name!r} must be a duration, got {value!r}")
        return seconds
    return convert(name, _field_types()[name], value, source)


_DURATIONS: Final = frozenset({"refresh_after"})
"""Settings given as seconds or a duration (`"12h"`): see crawler.durations."""
_POSITIVE: Final = (
    "concurrency",
    "concurrency_per_host",
    "request_timeout",
    "connect_timeout",
    "max_size",
    "max_url_length",
    "queue_window",
    "write_batch_size",
    "write_interval",
    "progress_interval",
    "autothrottle_target_concurrency",
    "autothrottle_max_delay",
)
_NOT_NEGATIVE: Final = (
    "delay_per_host",
    "max_retries",
    "backoff_base",
    "backoff_max",
    "retry_after_max",
    "retry_after_inline",
    "max_redirects",
    "max_depth",
    "max_pages",
    "max_pages_per_host",
    "blocking_warning",
    "shutdown_grace",
    "robots_error_cooldown",
    "crawl_delay_max",
    "refresh_after",
)


def _check_ranges(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    for name in _POSITIVE:
        if values[name] <= 0:  # type: ignore[operator]  # numbers, checked by _convert
            raise ConfigError(f"{sources[name]}: setting {name!r} must be greater than 0")
    for name in _NOT_NEGATIVE:
        if values[name] < 0:  # type: ignore[operator]  # numbers, checked by _convert
            raise ConfigError(f"{sources[name]}: setting {name!r} must not be negative")


def read_config_file(path: Path) -> dict[str, object]:
    """Return the `[crawler]` table of a TOML config file (the whole file if it has none),
    with the file's `[hosts]` tables under `hosts`."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    table = data.get("crawler", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [crawler] must be a table")
    if table is not data and "hosts" in data:
        table = {**table, "hosts": data["hosts"]}
    return table


def load_settings(
    *,
    config: Mapping[str, object] | None = None,
    spider: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
    spider_hosts: Mapping[str, object] | None = None,
) -> LoadedSettings:
    """Merge the setting layers and validate the result once.

    Args:
        config: the `[crawler]` table of config.toml; its `hosts` key holds the
            `[hosts."pattern"]` tables.
        spider: the spider class's `settings`.
        overrides: command-line values; strings are converted to each setting's type.
        spider_hosts: the spider class's `host_settings`.

    Raises:
        ConfigError: an unknown setting, a value of the wrong type or out of range, a bad
            host pattern, or a setting that cannot be set per host.
    """
    config = dict(config or {})
    config_hosts = config.pop("hosts", None)
    values: dict[str, object] = {f.name: getattr(_DEFAULTS, f.name) for f in _FIELDS}
    sources: dict[str, SettingsSource] = dict.fromkeys(values, "default")
    layers: tuple[tuple[SettingsSource, Mapping[str, object] | None], ...] = (
        ("config.toml", config),
        ("spider", spider),
        ("command line", overrides),
    )
    for source, layer in layers:
        for name, value in (layer or {}).items():
            _check_known(name, source, values)
            values[name] = _convert(name, value, source)
            sources[name] = source
    _check_ranges(values, sources)
    rules = [
        *_host_rules(config_hosts, "config.toml", values, sources),
        *_host_rules(spider_hosts, "spider", values, sources),
    ]
    values["host_rules"] = tuple(rules)
    return LoadedSettings(Settings(**values), types.MappingProxyType(sources))  # type: ignore[arg-type]


def _check_known(name: str, source: str, values: Mapping[str, object]) -> None:
    if name not in values:
        hint = difflib.get_close_matches(name, list(values), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{source}: unknown setting {name!r}{suggestion}")


def _host_rules(
    tables: object, source: HostSource, values: Mapping[str, object], sources: Mapping[str, str]
) -> list[HostRule]:
    """Validate one layer's per-host tables into rules (a pattern given twice is an error)."""
    if tables is None:
        return []
    rules: dict[str, HostRule] = {}
    for written, table in host_tables(tables, source).items():
        pattern = host_pattern(written, source)
        rule = HostRule(pattern, {}, source)
        if pattern in rules:
            raise ConfigError(f"{rule.label} is given twice (as {written!r})")
        for name, value in table.items():
            _check_known(name, rule.label, values)
            if name not in PER_HOST_SETTINGS:
                raise ConfigError(f"{rule.label}: {name!r} cannot be set per host")
            rule.values[name] = _convert(name, value, rule.label)
        _check_ranges(
            {**values, **rule.values}, {**sources, **dict.fromkeys(rule.values, rule.label)}
        )
        rules[pattern] = rule
    return list(rules.values())


_DEFAULTS: Final = Settings()
_FIELDS: Final = tuple(f for f in dataclasses.fields(Settings) if f.name != "host_rules")
