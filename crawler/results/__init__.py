"""The read side: what `crawler stats` reports (`report`), what `crawler status` shows
(`status`), exports of typed items (`export`), the JSON/JSONL/CSV writers they share
(`formats`) and what the live dashboard shows (`watch`).

Enters: a crawl database, opened read-only. Leaves: text, tables and files for the CLI.
"""
