"""The crawl: the task group that owns the writer, feeder, workers and progress (`crawl`),
the per-request error boundary, spider callbacks run with every output checked
(`callbacks`), the progress display (`progress`), `--processes` (`processes`), and the
offline runs of callbacks over stored or fetched pages (`reparse`, `parse_page`); reparse
cuts the stored pages into chunks (`reparse_chunks`), parses them here or in worker
processes (`reparse_workers`), stores them (`reparse_rows`) and shows its progress
(`reparse_progress`).

Enters: a spider and settings from the CLI or library. Leaves: `PageResult`s to the writer
(crawler.store) and a summary to the caller.
"""
