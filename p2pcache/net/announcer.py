"""Budgeted announcing: which of this node's items go into the DHT, in what order, how fast.

Announcing costs the network something for every key (about 40 datagrams a key done one by
one; about one a key with the grouped placement of dht_store), and a seeding node may hold
100,000 items, so announcing is a background task with a budget:

* items are queued in three tiers, served in this order: new items (just published or
  fetched: someone is likely to want them soon), popular items (requested from this node;
  the more requests, the sooner), then everything else in the store;
* the budget is a token bucket of keys per second; keys are taken in batches as large as the
  budget allows (up to `batch_size`), since a larger batch groups better (more keys share a
  region walk and a store_many datagram);
* each item is announced once here; the DHT node then re-announces it at half its record
  lifetime until it is withdrawn.

Derivation outputs ride the same queue and budget (one key per derivation).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from p2pcache.net.dht import DHTNode
from p2pcache.net.dht_store import StoreReport
from p2pcache.net.rate_limit import TokenBucket

log = logging.getLogger(__name__)

NEW, POPULAR, EXISTING = 0, 1, 2


@dataclass(frozen=True)
class AnnouncerConfig:
    """The announcing budget."""

    # Keys announced per second on average: 100,000 items take about 40 minutes at 40/s,
    # and cost the network about one datagram per key each way.
    keys_per_second: float = 40.0
    # Most keys per batch (one grouped placement). Also the bucket's burst.
    batch_size: int = 2000
    # Fewest keys worth a batch while more are queued (smaller batches group worse).
    min_batch: int = 50
    max_queued: int = 1_000_000
    ttl: int | None = None  # record lifetime; None: the DHT node's configured one


@dataclass
class AnnouncerStats:
    """Plain counters for the metrics layer."""

    announced: int = 0  # keys announced (items and derivations)
    batches: int = 0
    requests: int = 0  # DHT requests the batches sent
    dropped: int = 0  # keys not queued because the queue was full
    last_report: StoreReport | None = field(default=None, repr=False)


class Announcer:
    """Feeds a DHTNode this node's items, most useful first, within a budget."""

    def __init__(
        self,
        dht: DHTNode,
        endpoint_url: str,
        config: AnnouncerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dht = dht
        self.endpoint_url = endpoint_url
        self.config = config or AnnouncerConfig()
        self.clock = clock
        self.stats = AnnouncerStats()
        self._budget = TokenBucket(
            self.config.keys_per_second, max(1, self.config.batch_size), clock()
        )
        self._heap: list[tuple[int, int, int, str]] = []  # (tier, -requests, seq, name)
        self._queued: dict[str, tuple[int, int]] = {}  # name -> (tier, -requests) current
        self._requests: dict[str, int] = {}
        self._outputs: dict[str, dict[str, str]] = {}  # "drv:<hash>" -> outputs
        self._announced: set[str] = set()
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- what to announce ----------------------------------------------------------------------

    def add_new(self, hash_parts: Iterable[str]) -> None:
        """Items just published or fetched: announced before anything else."""
        for hash_part in hash_parts:
            self._queue(hash_part, NEW)

    def add_existing(self, hash_parts: Iterable[str]) -> None:
        """Items already in the store: announced when nothing newer or popular waits."""
        for hash_part in hash_parts:
            self._queue(hash_part, EXISTING)

    def note_requested(self, hash_part: str) -> None:
        """A peer or Guix asked this node for the item: count it, and if it is still waiting
        to be announced, move it forward. Counts are kept only until the item is announced,
        and for at most `max_queued` items (a client asking for many items costs no memory
        beyond that)."""
        if hash_part in self._announced:
            return
        count = self._requests.get(hash_part)
        if count is None:
            if len(self._requests) >= self.config.max_queued:
                return
            count = 0
        self._requests[hash_part] = count + 1
        current = self._queued.get(hash_part)
        if current is not None and current[0] != NEW:
            self._push(hash_part, POPULAR)

    def request_count(self, hash_part: str) -> int:
        """Requests noted for an item not announced yet."""
        return self._requests.get(hash_part, 0)

    def add_outputs(self, drv_hash_part: str, outputs: Mapping[str, str], *, new: bool) -> None:
        """A derivation's outputs this node holds (output name -> store path)."""
        name = f"drv:{drv_hash_part}"
        self._outputs[name] = dict(outputs)
        self._queue(name, NEW if new else EXISTING)

    def withdraw(self, hash_parts: Iterable[str]) -> None:
        """The items left this node: stop announcing them (records out expire by themselves)."""
        gone = list(hash_parts)
        for hash_part in gone:
            self._queued.pop(hash_part, None)
            self._announced.discard(hash_part)
            self._requests.pop(hash_part, None)
        self.dht.withdraw(gone)

    @property
    def pending(self) -> int:
        """Keys waiting to be announced."""
        return len(self._queued)

    def _queue(self, name: str, tier: int) -> None:
        if name in self._announced:
            return
        current = self._queued.get(name)
        if current is not None and current[0] <= tier:
            return
        if current is None and len(self._queued) >= self.config.max_queued:
            self.stats.dropped += 1
            return
        self._push(name, tier)

    def _push(self, name: str, tier: int) -> None:
        rank = (tier, -self._requests.get(name, 0))
        self._queued[name] = rank
        heapq.heappush(self._heap, (*rank, next(self._seq), name))
        self._wakeup.set()

    def _take(self, count: int) -> list[tuple[str, int]]:
        taken = []
        while self._heap and len(taken) < count:
            tier, negative_requests, _, name = heapq.heappop(self._heap)
            if self._queued.get(name) != (tier, negative_requests):
                continue  # stale: re-queued with a better rank, withdrawn, or announced
            del self._queued[name]
            taken.append((name, tier))
        return taken

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start announcing in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop after the batch in progress (if any) is cancelled; queued keys stay queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def delay_for_next_batch(self) -> float:
        """Seconds until the budget allows a worthwhile batch of what is queued."""
        if not self._queued:
            return 0.0
        worthwhile = min(self.pending, self.config.batch_size, self.config.min_batch)
        return self._budget.delay_for(self.clock(), worthwhile)

    async def announce_next_batch(self) -> StoreReport | None:
        """Announce as many of the first queued keys as the budget allows now; None if the
        queue is empty or the budget has no room for a worthwhile batch yet."""
        if not self._queued:
            return None
        now = self.clock()
        wanted = min(self.pending, self.config.batch_size)
        affordable = min(wanted, int(self._budget.available(now)))
        if affordable < min(wanted, self.config.min_batch):
            return None
        taken = self._take(affordable)
        self._budget.allow(now, len(taken))
        try:
            return await self._announce([name for name, _ in taken])
        except BaseException:
            for name, tier in taken:  # not announced: back in the queue, same tier
                self._queue(name, tier)
            raise

    async def _announce(self, names: list[str]) -> StoreReport:
        items = [n for n in names if not n.startswith("drv:")]
        derivations = {n[4:]: self._outputs[n] for n in names if n.startswith("drv:")}
        report = await self.dht.announce_many(
            items, derivations, self.endpoint_url, ttl=self.config.ttl
        )
        for name in derivations:
            self._outputs.pop(f"drv:{name}", None)
        self._announced.update(names)
        for name in names:
            self._requests.pop(name, None)
        self.stats.announced += len(names)
        self.stats.batches += 1
        self.stats.requests += report.requests
        self.stats.last_report = report
        log.info(
            "announced %d key(s) (%d still queued) with %d DHT requests",
            len(names),
            self.pending,
            report.requests,
        )
        return report

    async def _run(self) -> None:
        while True:
            if not self._queued:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            delay = self.delay_for_next_batch()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self.announce_next_batch()
            except Exception:
                log.warning("announcing a batch failed; it is retried later", exc_info=True)
                await asyncio.sleep(1.0)
