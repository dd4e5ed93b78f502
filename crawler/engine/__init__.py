"""The crawl: the task group that owns the writer, feeder, workers and progress display
(`crawl`; the display itself is crawler.stats.show_progress), the per-request error
boundary, spider callbacks run with every output checked (`callbacks`), re-crawls: which
pages are due again and whether a re-fetch changed them (`recrawl`), `--processes`
(`processes`) and its runs summed from the database (`summary`), and the offline runs of
callbacks over stored or fetched pages (`reparse`, on PostgreSQL `pg_reparse`;
`parse_page`); reparse cuts the stored pages into chunks (`reparse_chunks`), parses them
here or in worker processes (`reparse_workers`), stores them (`reparse_rows`) and shows its
progress (`reparse_progress`).

Enters: a spider and settings from the CLI or library. Leaves: `PageResult`s to the writer
(crawler.store) and a summary to the caller.
"""
