"""What users write, and the vocabulary every stage speaks.

Enters: nothing of the engine. Holds the `Spider` base class (`base`), the `Request`,
`RequestBatch` and `Response` a spider sends and receives (`http`), link rules
(`rules`), sitemaps (`sitemaps`), item checks (`validation`) and `process_item` (`items`), offline
callback tests (`testing`) and finding spider classes (`discovery`).

Leaves: requests to the frontier's gate (crawler.frontier.gate), items to the writer's records
(crawler.records). Imports only the bottom modules (errors, settings, urls, bodies, records,
failures, stats); no I/O.
"""
