"""Settings: layering, conversion of command-line strings, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler import ConfigError, Settings, load_settings
from crawler.settings import describe_settings, read_config_file


def test_layers_apply_in_order_defaults_config_spider_cli() -> None:
    loaded = load_settings(
        config={"concurrency": 4, "max_depth": 2, "max_retries": 1},
        spider={"max_depth": 3, "max_retries": 2},
        overrides={"max_retries": "5"},
    )
    s = loaded.settings
    assert (s.concurrency, s.max_depth, s.max_retries, s.max_pages) == (4, 3, 5, 0)
    assert loaded.sources["concurrency"] == "config.toml"
    assert loaded.sources["max_depth"] == "spider"
    assert loaded.sources["max_retries"] == "command line"
    assert loaded.sources["max_pages"] == "default"


def test_command_line_strings_are_converted_by_type() -> None:
    s = load_settings(
        overrides={
            "store_body": "true",
            "request_timeout": "2.5",
            "retry_statuses": "500, 503",
            "order": "dfs",
        }
    ).settings
    assert s.store_body is True
    assert s.request_timeout == 2.5
    assert s.retry_statuses == [500, 503]
    assert s.order == "dfs"


@pytest.mark.parametrize(
    ("layer", "values", "message"),
    [
        (
            "config",
            {"concurency": 3},
            "config.toml: unknown setting 'concurency' (did you mean 'concurrency'?)",
        ),
        ("spider", {"max_pages": "ten"}, "spider: setting 'max_pages' must be int, got 'ten'"),
        (
            "overrides",
            {"max_pages": "ten"},
            "command line: setting 'max_pages' must be int, got 'ten'",
        ),
        ("overrides", {"store_body": "maybe"}, "command line: setting 'store_body' must be bool"),
        ("overrides", {"order": "random"}, "command line: setting 'order' must be 'bfs' | 'dfs'"),
        ("config", {"concurrency": 0}, "config.toml: setting 'concurrency' must be greater than 0"),
        ("config", {"max_retries": -1}, "config.toml: setting 'max_retries' must not be negative"),
        ("config", {"store_body": 1}, "config.toml: setting 'store_body' must be bool"),
    ],
)
def test_bad_settings_raise_one_clear_line(
    layer: str, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**{layer: values})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_config_file_reads_the_crawler_table(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[crawler]\nconcurrency = 3\n")
    assert read_config_file(path) == {"concurrency": 3}


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[crawler\nconcurrency = ")
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="config file not found"):
        read_config_file(tmp_path / "missing.toml")


def test_every_setting_is_documented() -> None:
    docs = describe_settings()
    assert set(docs) == set(Settings.__dataclass_fields__)
    assert all(len(text) > 10 for text in docs.values())
