"""Everything that talks HTTP: the aiohttp client with retries, timeouts, size caps and
redirects (`client`), per-host politeness (`politeness`) and its autothrottle arithmetic
(`throttle`), robots.txt (`robots`), internal-address refusal (`addresses`) and the request
deadline sweeper (`deadlines`); a fetch's outcome types (`outcomes`), each redirect hop's checks
(`redirects`) and reading a body under the size cap (`responses`).

Enters: a claimed `Request` from the engine's workers. Leaves: a `Fetched`, `Failed` or
`Deferred` outcome back to the engine, and robots.txt answers to the frontier's queues.
Knows nothing of spiders' callbacks or of the database's writes.
"""
