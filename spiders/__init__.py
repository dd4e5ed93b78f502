"""Example spiders shipped with the crawler."""
