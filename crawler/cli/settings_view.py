"""`crawler settings`: the effective settings of a crawl (for a spider, for one host) and
the layer each value came from, with the per-site rules.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from crawler.cli.common import load_crawl_settings, parse_assignments, user_errors
from crawler.errors import ConfigError
from crawler.host_rules import host_pattern, matching_values
from crawler.links import host_of
from crawler.settings import LoadedSettings, describe_settings
from crawler.spider.discovery import find_spider

__all__ = ["settings_table", "show_settings"]


@click.command(name="settings")
@click.argument("spider", required=False)
@click.option("-s", "--set", "assignments", multiple=True, metavar="KEY=VALUE")
@click.option("--config", type=click.Path(path_type=Path))
@click.option("--host", help="Show the settings that apply to this host (per-site settings).")
def show_settings(
    spider: str | None, assignments: tuple[str, ...], config: Path | None, host: str | None
) -> None:
    """Show the effective settings (for SPIDER, for one --host) and where each came from."""
    with user_errors():
        spider_class = find_spider(spider) if spider else None
        overrides: dict[str, object] = dict(parse_assignments(assignments))
        loaded = load_crawl_settings(spider_class, config, overrides)
        if host is not None:
            loaded = _for_host(loaded, host)
    console = Console()
    console.print(settings_table(loaded))
    if host is None and loaded.settings.host_rules:
        rules = Table("host pattern", "values", "from", title="per-site settings")
        for rule in loaded.settings.host_rules:
            rule_values = ", ".join(f"{k} = {v!r}" for k, v in rule.values.items())
            rules.add_row(rule.pattern, escape(rule_values), rule.source)
        console.print(rules)


def _for_host(loaded: LoadedSettings, host: str) -> LoadedSettings:
    """The settings of one host, each per-host value's source naming its host pattern."""
    if "://" in host:
        host = host_of(host)
    elif host_pattern(host, "--host").startswith("*"):
        raise ConfigError(f"--host takes a host, not a pattern: {host!r}")
    else:
        host = host_pattern(host, "--host")
    chosen = matching_values(loaded.settings.host_rules, host)
    sources = {**loaded.sources, **{name: label for name, (_, label) in chosen.items()}}
    return LoadedSettings(loaded.settings.for_host(host), sources)  # type: ignore[arg-type]


def settings_table(loaded: LoadedSettings) -> Table:
    """Every setting's effective value, the layer it came from, and what it means."""
    docs = describe_settings()
    table = Table("setting", "value", Column("from", no_wrap=True), "meaning")
    for name, source in loaded.sources.items():
        value = escape(repr(getattr(loaded.settings, name)))
        table.add_row(name, value, escape(source), escape(docs.get(name, "")))
    return table
