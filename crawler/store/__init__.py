"""The database: an SQLite file (the embedded default) or a PostgreSQL database shared by
workers on many machines, behind one port (`backends`: open either, start and end a run,
make its writer).

SQLite: the schema and its migrations (`schema`, `migrations`), the single writer
(`writer`; `rows`, the rows a batch adds; `refusals`, for rows the database will not take),
every statement a write batch runs (`statements`, `bulk`), the writer's side of admission
(`budgets`) and of the frontier's claims and leases (`claims`), typed item tables
(`item_tables`, `columns`; what both backends share of them: `item_registry`), crawl runs
(`runs`), stored pages (`pages`) and the time series a running crawl writes for its
dashboard (`samples`).

PostgreSQL, the same tables and the same batches (`rows` builds them for both): the schema
(`pg_schema`), a connection that reconnects (`pg_link`), the writer (`pg_writer`) and its
statements (`pg_statements`), claims with crawl-wide politeness (`pg_claims`, `pg_pacing`),
typed item tables (`pg_items`), runs (`pg_runs`), a run's database (`pg_store`) and the read
side's connection (`pg_read`); imported, with asyncpg, when a PostgreSQL URL is opened
(`pg_url`: what the rest knows of PostgreSQL without them).

Enters: `PageResult`s and `Seeds` from the engine, claim orders from the feeder. Leaves:
committed rows, claimed requests to the feeder (crawler.frontier.feeder). Every SQL that
writes lives here; only the writer task writes.
"""
