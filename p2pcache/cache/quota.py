"""The cache size quota: least recently used NARs go first.

When the compressed NARs exceed the quota, the least recently accessed are removed until the
total is under the low-water mark (90 % of the quota, so that eviction does not run after every
single bake). A store item keeps its index row (it is still served uncompressed from the
store, and can be baked again); an item fetched from elsewhere is forgotten entirely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from p2pcache.cache.index import CacheIndex, Origin
from p2pcache.cache.nar_store import NarStore
from p2pcache.metrics import NodeMetrics

log = logging.getLogger(__name__)

LOW_WATER = 0.9
EVICTION_BATCH = 256


@dataclass(frozen=True, slots=True)
class EvictionReport:
    items: int
    bytes: int
    size_after: int


class QuotaKeeper:
    def __init__(
        self,
        index: CacheIndex,
        nar_store: NarStore,
        max_size: int,
        metrics: NodeMetrics,
        forget: Callable[[str], None],
    ) -> None:
        self.index = index
        self.nar_store = nar_store
        self.max_size = max_size
        self.metrics = metrics
        self.forget = forget
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task | None = None

    def request_check(self) -> None:
        """Enforce the quota soon (coalesces many requests into one run)."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self.enforce())

    async def enforce(self, max_size: int | None = None) -> EvictionReport:
        """Evict least recently used NARs while the cache is over `max_size` (default quota)."""
        limit = self.max_size if max_size is None else max_size
        async with self._lock:
            size = (await self.index.stats()).cached_bytes
            if size <= limit:
                return EvictionReport(0, 0, size)
            target = int(limit * LOW_WATER) if max_size is None else limit
            evicted = freed = 0
            while size > target:
                batch = await self.index.least_recently_used(EVICTION_BATCH)
                if not batch:
                    break
                for item in batch:
                    if size <= target:
                        break
                    self.forget(item.hash_part)
                    if item.origin is Origin.STORE:
                        await self.index.mark_unbaked(item.hash_part)
                    else:
                        await self.index.remove([item.hash_part])
                    self.nar_store.remove(item.nar_file)
                    size -= item.file_size or 0
                    freed += item.file_size or 0
                    evicted += 1
            self.metrics.evictions.inc(evicted)
            self.metrics.evicted_bytes.inc(freed)
            self.metrics.cache_bytes.set(size)
            if evicted:
                log.info(
                    "evicted %d cached NARs (%d bytes) to stay under the %d-byte quota",
                    evicted,
                    freed,
                    limit,
                )
            return EvictionReport(evicted, freed, size)
