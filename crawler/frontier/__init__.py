"""Which URL is crawled, and when: the admission gate that admits, skips or defers each
discovered request from its URL alone (`gate`), the in-memory per-host queues that hand
requests out as hosts become ready (`queues`), and the feeder task between the database's
pending rows and the workers (`feeder`).

Enters: requests yielded by spiders (through the engine's callbacks) and claimed rows from
the store. Leaves: `Candidate`s and `Skipped`s to the writer, `Claimed` requests to the
workers' queue. The frontier itself is the `requests` table (crawler.store).
"""
