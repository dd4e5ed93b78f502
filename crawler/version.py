"""The crawler's version: one place, read by the package root, the settings' user agent,
`crawler --version` and the package metadata (pyproject.toml)."""

__version__ = "0.1.0"
