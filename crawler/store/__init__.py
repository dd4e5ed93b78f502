"""The database: the schema and its migrations (`schema`, `migrations`), the single writer
(`writer`; `rows`, the rows a batch adds; `refusals`, for rows the database will not take),
every statement a write batch runs (`statements`, `bulk`), the writer's side of admission
(`budgets`) and of the frontier's claims and leases (`claims`), typed item tables
(`item_tables`, `columns`), crawl runs (`runs`), stored pages (`pages`) and the time series
a running crawl writes for its dashboard (`samples`).

Enters: `PageResult`s and `Seeds` from the engine, claim orders from the feeder. Leaves:
committed rows, claimed requests to the feeder (crawler.frontier.feeder). Every SQL that
writes lives here; only the writer task writes.
"""
