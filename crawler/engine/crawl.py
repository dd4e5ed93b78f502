"""The crawl: owns every task (writer, feeder, workers, progress) and runs spider callbacks.

`Crawl.run()` opens one `asyncio.TaskGroup`. Workers take claimed requests from the queue,
fetch them, run the callback and hand one `PageResult` per request to the storage writer.
The crawl ends when the feeder finds nothing unfinished and nothing pending, when a limit is
reached, or when `stop()` is called (first Ctrl-C): then workers finish what they hold,
within `shutdown_grace`, and the writer commits everything before the run is closed.

`crawl()` is the library entry point: it runs inside any event loop, any number of times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, final

from rich.console import Console

from crawler.engine.callbacks import CallbackRunner, LoopHeartbeat, spider_error
from crawler.engine.recrawl import conditional, page_record, requeue
from crawler.errors import StorageError
from crawler.failures import describe, internal_failure
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Deferred, Failed, Fetched
from crawler.fetch.politeness import Hosts
from crawler.fetch.robots import RobotsCache
from crawler.frontier.feeder import Feeder
from crawler.frontier.gate import Frontier
from crawler.links import host_of
from crawler.records import Claimed, PageChange, PageResult, RequestState
from crawler.settings import Settings, load_settings
from crawler.spider.base import Spider
from crawler.spider.http import Response
from crawler.stats import Stats, show_progress
from crawler.store.backends import CrawlStore, describe_target, open_store, store_errors
from crawler.store.pg_url import is_postgres_url
from crawler.store.writer import BatchWriter, Seeds

__all__ = ["Crawl", "crawl", "run_to_the_end"]

_SEED_BATCH: Final = 2000
_T = TypeVar("_T")

logger = logging.getLogger(__name__)


@final
class Crawl:
    """One run of one spider into one database file.

    Example:
        ```python
        crawl = Crawl(BooksSpider, db="books.db", settings={"max_pages": 100})
        summary = await crawl.run()
        ```
    """

    def __init__(
        self,
        spider: Spider | type[Spider],
        *,
        db: str | Path,
        settings: Settings | Mapping[str, object] | None = None,
        fresh: bool = False,
        console: Console | None = None,
        recrawl: bool = False,
    ) -> None:
        """`spider` is a Spider class or instance; `settings` a Settings, or overrides (a
        dict, as for `crawl()`) applied above the spider's own `settings`."""
        spider = spider() if isinstance(spider, type) else spider
        if not isinstance(settings, Settings):
            settings = load_settings(overrides=settings, **type(spider).setting_layers()).settings
        self.spider = spider
        self.db: str | Path = db if is_postgres_url(db) else Path(db)
        self.settings = settings
        self.stats = Stats()
        self.status = "running"
        self.reason = ""
        self.started = False
        """Whether the database was opened and the run recorded (later errors are not bad input)."""
        self._fresh = fresh
        self._recrawl = recrawl
        self._storage_failed = False
        self._console = console
        self._stop_requested = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._frontier = Frontier(settings, spider, list(spider.allowed_domains))
        self._heartbeat = LoopHeartbeat()
        self._callbacks = CallbackRunner(
            spider,
            self._frontier,
            self.stats,
            on_stop=self.stop,
            blocking_warning=settings.blocking_warning,
            heartbeat=self._heartbeat,
        )
        self._parse_types = frozenset(settings.parse_content_types)
        self._any_type_callbacks = frozenset(spider.any_content_callbacks)
        self._hosts = Hosts(settings)
        self._robots = RobotsCache(settings, self._hosts)

    def stop(self, reason: str = "interrupted") -> None:
        """Stop taking new work; in-flight requests finish within `shutdown_grace`."""
        if not self._stop_requested.is_set():
            logger.warning("stopping: %s", reason)
            self.status = "interrupted" if reason == "interrupted" else "stopped"
            self.reason = reason
            self._stop_requested.set()

    async def run(self) -> dict[str, Any]:
        """Run the crawl to its end and return the final stats (also stored in `crawls`)."""
        store = await open_store(self.db)
        run_id: int | None = None
        try:
            settings_json = dataclasses.asdict(self.settings)
            settings_json["database"] = describe_target(self.settings.database)
            run_id = await store.start_run(
                spider=self.spider.name, settings=settings_json, fresh=self._fresh
            )
            queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
            feeder = Feeder(queue, settings=self.settings, hosts=self._hosts, robots=self._robots)
            storage = store.writer(
                run_id=run_id,
                settings=self.settings,
                stats=self.stats,
                on_committed=feeder.release,
                hosts=self._hosts,
            )
            storage.watch(feeder.hosts_with_work, self._hosts.learn)  # other processes' pauses
            feeder.notified = store.listen(feeder.wake)  # other processes' new work
            self.stats.requeued = await requeue(store, self.settings, recrawl=self._recrawl)
            await storage.load_counts()
            self._hosts.pacer = store.pacer()
            await store.declare_item_tables(self.spider)
            self.started = True
            refusal = self._frontier.redirect_refusal
            async with Fetcher(self.settings, refusal, hosts=self._hosts) as fetcher:
                feeder.on_forget, feeder.on_restore = fetcher.forget, fetcher.cookies.restore_hosts
                await self.spider.opened()
                await self._run_tasks(storage, feeder, fetcher, queue)
            if self.status == "running":
                self.status, self.reason = "finished", "frontier exhausted"
        except BaseException as exc:
            self._storage_failed = isinstance(exc, StorageError)
            if self.status == "running" or isinstance(exc, asyncio.CancelledError):
                self.status = "interrupted" if isinstance(exc, asyncio.CancelledError) else "failed"
                self.reason = self.reason or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await run_to_the_end(self._close(store, run_id))
        return self.stats.as_dict()

    async def _close(self, store: CrawlStore, run_id: int | None) -> None:
        """Roll back any half-written batch, free our leases and record how the run ended."""
        self.stats.finished = time.monotonic()
        try:
            if run_id is not None:
                await store.end_run(
                    run_id, status=self.status, reason=self.reason, stats=self.stats.as_dict()
                )
        except store_errors() as exc:  # the next run marks it crashed
            level = logging.DEBUG if self._storage_failed else logging.WARNING  # the CLI said so
            logger.log(level, "could not record the end of the run: %s", exc)
        finally:
            try:
                await store.close()
            except store_errors() as exc:
                logger.warning("could not close the database cleanly: %s", exc)
        try:
            await self.spider.closed(self.status)
        except Exception:
            logger.exception("spider %s: closed() failed", self.spider.name)

    async def _run_tasks(
        self,
        storage: BatchWriter,
        feeder: Feeder,
        fetcher: Fetcher,
        queue: asyncio.Queue[Claimed | None],
    ) -> None:
        try:
            async with asyncio.TaskGroup() as outer:
                outer.create_task(storage.run_writer(), name="writer")
                progress = outer.create_task(self._progress(), name="progress")
                heartbeat = outer.create_task(self._heartbeat.run(), name="heartbeat")
                async with asyncio.TaskGroup() as crawl:
                    feeder.hold()
                    crawl.create_task(self._seed(storage, feeder), name="seed")
                    crawl.create_task(feeder.run(storage), name="feeder")
                    crawl.create_task(self._stopper(feeder), name="stopper")
                    self._workers = [
                        crawl.create_task(
                            self._work(queue, storage, fetcher, feeder), name=f"worker-{i}"
                        )
                        for i in range(self.settings.concurrency)
                    ]
                    await self._wait_workers()
                    self._stop_requested.set()  # ends the stopper once the workers are done
                await storage.stop_writer()
                progress.cancel()
                heartbeat.cancel()
        except* StorageError as group:
            raise group.exceptions[0] from None

    async def _wait_workers(self) -> None:
        await asyncio.wait(self._workers)

    async def _stopper(self, feeder: Feeder) -> None:
        """On stop(): stop the feeder, give workers `shutdown_grace` seconds, then cancel them."""
        await self._stop_requested.wait()
        feeder.stop()
        pending = [task for task in self._workers if not task.done()]
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=self.settings.shutdown_grace)
        for task in still_running:
            task.cancel()

    async def _progress(self) -> None:
        console = self._console or Console(stderr=True)
        await show_progress(self.stats, console=console, interval=self.settings.progress_interval)

    async def _seed(self, storage: BatchWriter, feeder: Feeder) -> None:
        """Admit the spider's start requests, in batches, while the crawl already runs."""
        seeds = Seeds()
        previous: asyncio.Future[None] | None = None  # the batch the writer is committing
        try:
            async for request in self.spider.start_requests():
                self._callbacks.admit(
                    request,
                    parent_id=None,
                    candidates=seeds.candidates,
                    skipped=seeds.skipped,
                    errors=seeds.errors,
                )
                if len(seeds.candidates) + len(seeds.skipped) >= _SEED_BATCH:
                    committed = await storage.submit_for_commit(seeds)
                    if previous is not None:
                        await previous
                    previous, seeds = committed, Seeds()
        except Exception as exc:
            logger.exception("spider %s: start_requests() failed", self.spider.name)
            seeds.errors.append(spider_error("", f"{type(exc).__name__}: {exc}", "start_requests"))
        await storage.submit(seeds)
        if previous is not None:
            await previous
        feeder.release()  # the hold taken before seeding started

    async def _work(
        self,
        queue: asyncio.Queue[Claimed | None],
        storage: BatchWriter,
        fetcher: Fetcher,
        feeder: Feeder,
    ) -> None:
        """Fetch and process requests until the feeder sends the stop sentinel."""
        while (claimed := await queue.get()) is not None:
            self.stats.in_flight += 1
            try:
                result = await self._process(claimed, fetcher, storage)
            except StorageError:
                raise  # the engine's own invariant: the database cannot take the results
            except Exception as exc:  # the per-request error boundary (crawler.failures)
                result = self._internal_failure(claimed, exc)
            finally:
                self.stats.in_flight -= 1
                feeder.done(claimed)  # its host may take another request
            # what the host learned goes with the result (it stays in memory until written)
            learned = self._hosts.snapshot(host_of(claimed.request.url))
            result.host = fetcher.cookies.with_cookies(learned)
            await storage.submit(result)

    def _internal_failure(self, claimed: Claimed, exc: Exception) -> PageResult:
        """What is recorded for a request whose handling raised: failed, kind `internal`."""
        logger.warning(
            "internal error on %s: %s (traceback stored in errors)",
            claimed.request.url,
            describe(exc),
        )
        self._frontier.release(claimed.id)
        return internal_failure(claimed, exc, attempts=claimed.attempts + 1)

    async def _process(
        self, claimed: Claimed, fetcher: Fetcher, storage: BatchWriter
    ) -> PageResult:
        """Fetch one request and run its callback; every outcome becomes a PageResult."""
        request = conditional(claimed.request, claimed.previous)  # a re-fetch's validators
        if not fetcher.start_urls_known:  # the address classes they resolve to are the crawl's
            fetcher.start_from(self.spider)
        refused = await fetcher.address_refusal(request, attempts_before=claimed.attempts)
        if refused is not None:  # before robots.txt, whose fetch would be refused the same way
            return PageResult(
                request_id=claimed.id,
                url=request.url,
                state=RequestState.FAILED,
                reason=f"{refused.error.kind}: {refused.error.message}"[:500],
                attempts=refused.attempts,
                errors=refused.failures,
            )
        robots = await self._robots.check(request.url, fetcher)  # fetches robots.txt once
        if not robots.allowed:
            return self._robots.refused(claimed, robots.fetched)
        known = functools.partial(self._frontier.redirect_known, claimed.id)
        outcome = await fetcher.fetch(request, attempts_before=claimed.attempts, known=known)
        result = PageResult(
            request_id=claimed.id,
            url=request.url,
            state=RequestState.DONE,
            attempts=outcome.attempts,
            errors=list(outcome.failures),
            robots=robots.fetched,
        )
        self.stats.retries += max(0, outcome.attempts - claimed.attempts - 1)
        if isinstance(outcome, Fetched):  # the redirect targets it claimed were reached
            self._frontier.followed(claimed.id, depth=request.depth, skipped=result.skipped)
        else:
            self._frontier.release(claimed.id)
        if isinstance(outcome, Failed):
            result.state = RequestState.FAILED
            result.reason = f"{outcome.error.kind}: {outcome.error.message}"[:500]
            return result
        if isinstance(outcome, Deferred):
            result.state = RequestState.PENDING
            result.not_before = outcome.not_before
            return result
        await self._parse(outcome, claimed, result, storage)
        return result

    async def _parse(
        self, outcome: Fetched, claimed: Claimed, result: PageResult, storage: BatchWriter
    ) -> None:
        """Record a fetched page in `result`; run its callback if it is parseable and new."""
        request = claimed.request
        response = Response(
            url=outcome.url,
            status=outcome.status,
            headers=outcome.headers,
            body=outcome.body,
            request=request,
        )
        parseable = outcome.status < 300 and (
            response.content_type in self._parse_types
            or request.callback in self._any_type_callbacks
        )
        previous, store_body = claimed.previous, self.settings.store_body
        result.page = page = page_record(outcome, response, previous, parseable, store_body)
        if page.change is PageChange.UNCHANGED:
            return  # its callbacks ran on this content before: its items stand
        if outcome.status >= 400:
            result.state = RequestState.FAILED
            result.reason = f"http_status: {outcome.status}"
        elif parseable:
            await self._callbacks.run(
                response,
                result,
                links=self.settings.store_links,
                spill=lambda c, s: storage.submit_and_wait(Seeds(candidates=c, skipped=s)),
            )


async def run_to_the_end(cleanup: Coroutine[Any, Any, _T]) -> _T:
    """Await `cleanup` to its end even when this task is cancelled meanwhile, then re-raise
    the cancellation (else return what `cleanup` returned).

    Recording how a run ended, rolling back a reparse: a second Ctrl-C arriving then must not
    cut it short (`asyncio.shield` alone would return at once and leave the cleanup to be
    cancelled when the event loop shuts down, the run marked `running`, its leases held).
    """
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the cleanup itself was cancelled
            cancelled = True
        else:
            break
    if cancelled:
        raise asyncio.CancelledError
    return result


async def crawl(
    spider: type[Spider] | Spider,
    *,
    db: str | Path,
    settings: Mapping[str, object] | None = None,
    config: Mapping[str, object] | None = None,
    fresh: bool = False,
    recrawl: bool = False,
) -> dict[str, Any]:
    """Crawl with a spider into a SQLite file and return the final stats.

    Runs inside any running event loop, as often as needed; nothing is global.

    Args:
        spider: a Spider subclass (or an instance of one).
        db: the database file; an existing crawl of the same spider is resumed.
        settings: overrides, applied above the spider's own `settings`.
        config: a config.toml-style layer below the spider's settings.
        fresh: empty the database first instead of resuming.
        recrawl: fetch again, conditionally, every page fetched before (`--recrawl`).

    Example:
        ```python
        stats = await crawl(BooksSpider, db="books.db", settings={"max_pages": 100})
        ```
    """
    instance = spider() if isinstance(spider, type) else spider
    loaded = load_settings(config=config, overrides=settings, **type(instance).setting_layers())
    run = Crawl(instance, db=db, settings=loaded.settings, fresh=fresh, recrawl=recrawl)
    return await run.run()
