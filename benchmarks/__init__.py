"""Benchmarks comparing this crawler with Scrapy, Crawlee and raw aiohttp floors (see README.md)."""
