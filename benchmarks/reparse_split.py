"""Where a reparsed page's time goes, measured in this process (see benchmarks/reparse.py).

Each part runs over every stored page of the database in turn: reading the chunks (rows
with their compressed bodies), gunzip, building the selectolax tree, the whole
`ChunkParser.parse` (the callback's share is that minus gunzip and the tree), pickling each
chunk's results and back (what a worker process adds), and writing them with `RowWriter`
inside a transaction that is rolled back. Times are CPU seconds of this process (all its
threads, so SQLite's too), which a busy machine disturbs less than wall-clock time.
"""

from __future__ import annotations

import asyncio
import pickle
import shutil
import time
from pathlib import Path

from benchmarks.bench_spider import BenchSpider
from crawler.engine.reparse_chunks import ChunkParser, ParsedChunk
from crawler.engine.reparse_rows import RowWriter, Tally
from crawler.settings import load_settings
from crawler.store.pages import StoredPage, pages_with_bodies
from crawler.store.schema import open_database

CHUNK = 100


def cost_split(source: Path, work: Path) -> dict[str, float]:
    """Microseconds per page for each part of a reparse of `source` (a copy is used)."""
    db = work / "split.db"
    shutil.copyfile(source, db)
    return asyncio.run(_split(db))


async def _split(db: Path) -> dict[str, float]:
    conn = await open_database(db)
    try:
        seconds: dict[str, float] = {}
        started = time.process_time()
        chunks: list[list[StoredPage]] = []
        after = 0
        while pages := await pages_with_bodies(conn, after, CHUNK):
            after = pages[-1].id
            chunks.append(pages)
        seconds["read"] = time.process_time() - started
        count = sum(len(chunk) for chunk in chunks)
        started = time.process_time()
        bodies = [page.body() or b"" for chunk in chunks for page in chunk]
        seconds["decompress"] = time.process_time() - started
        pages_in_order = [page for chunk in chunks for page in chunk]
        started = time.process_time()
        for page, body in zip(pages_in_order, bodies, strict=True):
            page.response(body).tree  # noqa: B018 (building the tree is what is timed)
        seconds["parse"] = time.process_time() - started
        parser = ChunkParser(BenchSpider(), load_settings().settings)
        started = time.process_time()
        parsed: list[ParsedChunk] = [await parser.parse(chunk) for chunk in chunks]
        whole = time.process_time() - started
        seconds["callback"] = whole - seconds["decompress"] - seconds["parse"]
        started = time.process_time()
        blobs = [pickle.dumps(chunk_result) for chunk_result in parsed]
        seconds["pickle (in a worker)"] = time.process_time() - started
        started = time.process_time()
        for blob in blobs:
            pickle.loads(blob)
        seconds["unpickle (in the parent)"] = time.process_time() - started
        writer = RowWriter(conn, Tally())
        await conn.execute("BEGIN IMMEDIATE")
        started = time.process_time()
        for chunk_result in parsed:
            await writer.write(chunk_result.results, chunk_result.tables)
        seconds["write"] = time.process_time() - started
        await conn.execute("ROLLBACK")
        return {part: round(1e6 * value / count, 1) for part, value in seconds.items()}
    finally:
        await conn.close()
