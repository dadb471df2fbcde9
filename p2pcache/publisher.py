"""Publishing the local Guix store: keep the cache index current and bake items into the cache.

At start the publisher reads every valid path from the Guix database into the index (in
batches, in the background), so the endpoint answers for the whole store at once: an item not
yet baked is vouched for by the daemon's own record and served uncompressed from the store.
Then it polls the database for new rows (`id > last seen`, persisted in the index) and bakes
them, so a seeding node stays current by itself. Items served while unbaked are queued for
baking too. Baking runs in worker threads; the event loop only schedules it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from p2pcache.cache.baker import BakeResult, CorruptStoreItem, bake_store_item
from p2pcache.cache.index import CacheIndex, IndexedItem, NewItem, Origin, State
from p2pcache.cache.nar_store import NarStore
from p2pcache.config import Config
from p2pcache.errors import P2PCacheError
from p2pcache.guix.narinfo import format_nar_hash, parse_nar_hash
from p2pcache.guix.store_db import GuixStoreDatabase, StoreDatabaseNotFound, StoreItemInfo
from p2pcache.metrics import NodeMetrics

log = logging.getLogger(__name__)

LAST_STORE_ID = "last_store_id"
# Rows read from the Guix database per batch (one read transaction each).
SYNC_BATCH = 2000
COLLECTED_CHECK_INTERVAL = 3600.0
"""How often the store items are compared with the Guix database for rows `guix gc` deleted,
besides after any poll that finds fewer rows than the one before."""
COLLECTED_CHECK_PAGE = 5000
"""Store items compared at a time (their ids, and the database's ids in the same range)."""


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def new_item_from_store(info: StoreItemInfo, nar_size: int | None = None) -> NewItem:
    """An index entry for a valid path, vouched for by the Guix daemon's record."""
    base = basename(info.path)
    return NewItem(
        hash_part=base.partition("-")[0],
        store_path=info.path,
        nar_hash=format_nar_hash(info.nar_sha256),
        nar_size=info.nar_size if nar_size is None else nar_size,
        references=tuple(basename(r) for r in info.references),
        deriver=basename(info.deriver) if info.deriver else None,
        origin=Origin.STORE,
        store_id=info.id,
    )


@dataclass(frozen=True)
class PublisherSettings:
    store_root: Path
    db_poll_interval: float
    bake_new_items: bool
    zstd_level: int

    @classmethod
    def from_config(cls, config: Config) -> PublisherSettings:
        return cls(
            config.store_root, config.db_poll_interval, config.bake_new_items, config.zstd_level
        )


@dataclass(frozen=True, slots=True)
class BakeJob:
    hash_part: str
    store_path: str
    nar_sha256: bytes
    nar_size: int | None
    info: StoreItemInfo | None = None
    """Set when the item is not in the index yet (its NarSize was unknown)."""


class Publisher:
    """Keeps the index in step with the Guix store and bakes store items into the cache."""

    def __init__(
        self,
        settings: PublisherSettings,
        store_db: GuixStoreDatabase,
        index: CacheIndex,
        nar_store: NarStore,
        metrics: NodeMetrics,
        *,
        bake_executor: Executor,
        compress_executor: Executor,
        on_changed: Callable[[str], None] = lambda hash_part: None,
        on_gone: Callable[[list[str]], None] = lambda hash_parts: None,
    ) -> None:
        self.settings = settings
        self.store_db = store_db
        self.index = index
        self.nar_store = nar_store
        self.metrics = metrics
        self.bake_executor = bake_executor
        self.compress_executor = compress_executor
        self.on_changed = on_changed
        self.on_gone = on_gone
        """Told of store items forgotten because the store lost them (`guix gc`)."""
        self._rows: int | None = None
        self._shrank = False
        self._checked_at = time.monotonic()
        self.available = False
        self.synced = asyncio.Event()
        self._queue: asyncio.Queue[BakeJob] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task] = []

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.store_db.open()
        except StoreDatabaseNotFound as e:
            log.warning("this node publishes nothing from a local store: %s", e)
            self.synced.set()
            return
        except P2PCacheError as e:
            log.warning(
                "this node publishes nothing from a local store: the Guix store database "
                "cannot be read: %s",
                e,
            )
            self.synced.set()
            return
        self.available = True
        self._tasks = [
            asyncio.create_task(self._watch(), name="store-watch"),
            asyncio.create_task(self._bake_worker(), name="bake-worker"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.store_db.close()

    # -- following the store database ---------------------------------------------------------

    async def _watch(self) -> None:
        """Follow the database; the store found on the very first start is not baked wholesale
        (`p2pcache publish --all` does that), everything that appears later is."""
        stored = self.index.get_state(LAST_STORE_ID)
        last_id = int(stored or 0)
        bake_found = stored is not None
        while True:
            try:
                last_id = await self.sync(after_id=last_id, bake_found=bake_found)
                bake_found = True
                if self._shrank or time.monotonic() - self._checked_at > COLLECTED_CHECK_INTERVAL:
                    await self.forget_collected()
            except P2PCacheError as e:
                log.warning("reading the Guix store database failed: %s; will retry", e)
            self.synced.set()
            await asyncio.sleep(self.settings.db_poll_interval)

    async def sync(self, *, after_id: int, bake_found: bool) -> int:
        """Add valid paths with id > after_id to the index, and queue them for baking when
        `bake_found` (and baking new items is configured). Returns the highest id seen."""
        started, added = time.monotonic(), 0
        bake = bake_found and self.settings.bake_new_items
        async for batch in self.store_db.iter_valid_paths(after_id=after_id, batch=SYNC_BATCH):
            known = [i for i in batch if i.nar_size is not None]
            added += await self.index.add_items(new_item_from_store(i) for i in known)
            for info in batch:
                if info.nar_size is None:
                    # Very old rows lack NarSize: bake first, index once the size is known.
                    self.enqueue(self._job(info, with_info=True))
                elif bake:
                    self.enqueue(self._job(info))
            after_id = max(after_id, batch[-1].id)
            await self.index.set_state(LAST_STORE_ID, after_id)
        rows = await self.store_db.count()
        self.metrics.store_items.set(rows)
        self._shrank = self._rows is not None and rows < self._rows
        self._rows = rows
        if added:
            log.info(
                "found %d new store items in the Guix database (%.1f s)",
                added,
                time.monotonic() - started,
            )
        return after_id

    async def forget_collected(self) -> list[str]:
        """Forget the store items not baked whose rows the Guix database no longer has
        (`guix gc`): nothing backs them now. A baked one stays (its NAR is in the cache), so
        does one queued for baking (its bake checks the store), and so does a path that was
        registered again since (it has a new id). Returns the hash parts forgotten."""
        self._checked_at = time.monotonic()
        gone = []
        after = 0
        while page := await self.index.unbaked_store_ids(after, COLLECTED_CHECK_PAGE):
            after = page[-1][0]
            valid = await self.store_db.valid_ids(page[0][0], after)
            for store_id, hash_part in page:
                if store_id in valid or hash_part in self._queued:
                    continue
                item = self.index.get(hash_part)
                if item is not None and await self.store_db.get(item.store_path) is None:
                    gone.append(hash_part)
        if gone:
            await self.index.remove(gone)
            self.on_gone(gone)
            log.info(
                "forgot %d store items that are no longer in the Guix database (collected "
                "as garbage)",
                len(gone),
            )
        return gone

    @staticmethod
    def _job(info: StoreItemInfo, *, with_info: bool = False) -> BakeJob:
        base = basename(info.path)
        return BakeJob(
            base.partition("-")[0],
            info.path,
            info.nar_sha256,
            info.nar_size,
            info if with_info else None,
        )

    # -- baking -------------------------------------------------------------------------------

    def enqueue(self, job: BakeJob) -> None:
        if job.hash_part in self._queued:
            return
        self._queued.add(job.hash_part)
        self._queue.put_nowait(job)
        self.metrics.bake_queue.set(self._queue.qsize())

    def enqueue_item(self, item: IndexedItem) -> None:
        """Queue an indexed store item for baking (e.g. after serving it uncompressed); not
        one found corrupt, which baking would only check and refuse again."""
        if item.origin is Origin.STORE and item.state is State.UNBAKED:
            digest = parse_nar_hash(item.nar_hash)
            self.enqueue(BakeJob(item.hash_part, item.store_path, digest, item.nar_size))

    async def _bake_worker(self) -> None:
        while True:
            job = await self._queue.get()
            self.metrics.bake_queue.set(self._queue.qsize())
            try:
                await self.bake(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("baking %s failed unexpectedly", job.store_path)
            finally:
                self._queued.discard(job.hash_part)

    async def bake(
        self, job: BakeJob, on_progress: Callable[[int], None] | None = None
    ) -> BakeResult | None:
        """Bake one store item in a worker thread; record it in the index when it verifies.

        `on_progress` is called from the worker thread with each NAR byte count baked.
        Returns None when the item was already baked or could not be baked (logged, counted).
        """
        current = self.index.get(job.hash_part)
        if current is not None and current.is_baked:
            return None
        source = self.settings.store_root / basename(job.store_path)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(
                self.bake_executor,
                lambda: bake_store_item(
                    source,
                    self.nar_store,
                    job.hash_part,
                    expected_sha256=job.nar_sha256,
                    expected_size=job.nar_size,
                    level=self.settings.zstd_level,
                    executor=self.compress_executor,
                    on_progress=on_progress,
                ),
            )
        except CorruptStoreItem as e:
            log.error("refusing to publish a corrupt store item: %s", e)
            self.metrics.baked.labels("corrupt").inc()
            self.metrics.store_corrupt.inc()
            await self.index.mark_corrupt(job.hash_part)
            self.on_changed(job.hash_part)
            return None
        except (P2PCacheError, OSError) as e:
            log.error("could not bake %s: %s", job.store_path, e)
            self.metrics.baked.labels("error").inc()
            return None
        if job.info is not None:
            await self.index.add_items([new_item_from_store(job.info, result.summary.size)])
        table = result.table
        await self.index.mark_baked(
            job.hash_part, result.nar_file, table.file_size, table.encode(), table.root
        )
        self.metrics.baked.labels("ok").inc()
        self.metrics.baked_bytes.inc(result.summary.size)
        self.metrics.bake_seconds.observe(time.monotonic() - started)
        self.on_changed(job.hash_part)
        log.info(
            "baked %s (%d bytes of NAR, %d compressed, %.2f s)",
            basename(job.store_path),
            result.summary.size,
            table.file_size,
            time.monotonic() - started,
        )
        return result

    @property
    def queue_size(self) -> int:
        return self._queue.qsize()

    async def wait_idle(self, timeout: float) -> None:
        """Wait until the bake queue is empty (tests and `publish`)."""
        deadline = time.monotonic() + timeout
        while self._queued:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._queued)} items still baking after {timeout} s")
            await asyncio.sleep(0.05)
