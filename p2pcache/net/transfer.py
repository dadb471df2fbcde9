"""Fetching an item's chunks from providers: in parallel, checked one by one, resumable by index.

The first provider that gives a chunk table consistent with the item (its NarSize) fixes the
reference digests. Chunks are then fetched in batches from up to `parallel` providers at once
(work stealing: a provider that is faster takes more batches), every frame decompressed and
checked against its reference digest in a worker thread before it counts. A provider that
fails is dropped for this transfer and its unfinished batch goes back to the queue from the
first missing chunk; one that sends a bad frame or a table that disagrees with the reference
is also penalized (and banned on repetition). Verified chunks are yielded strictly in order,
with at most `window` chunks held ahead of the consumer, so memory stays bounded.

The reference table itself is only as good as the provider that sent it: the whole NAR's hash
is checked by the caller at the end (and, once attestations carry the chunk root, the table is
checked against builder-signed data before any chunk is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from p2pcache.cache.chunk_table import ChunkTable, ChunkTableError
from p2pcache.cache.chunked_zstd import decompress_frame
from p2pcache.errors import P2PCacheError
from p2pcache.net.peer_client import PeerClient, PeerMisbehaved, PeerUnavailable
from p2pcache.net.peer_ranking import PeerRanking

log = logging.getLogger(__name__)


class TransferFailed(P2PCacheError):
    """No provider could deliver the item (all unreachable, missing it, or lying)."""


@dataclass(frozen=True, slots=True)
class VerifiedChunk:
    index: int
    frame: bytes
    """The provider's compressed frame: a valid zstd frame of exactly this chunk."""
    data: bytes
    provider: str


@dataclass
class TransferStats:
    bytes_in: int = 0
    chunks: int = 0
    chunk_failures: dict[str, int] = field(default_factory=dict)
    providers_used: set[str] = field(default_factory=set)
    failovers: int = 0
    """Batches handed back after their provider failed or lied, for another to finish."""

    def failed(self, reason: str) -> None:
        self.chunk_failures[reason] = self.chunk_failures.get(reason, 0) + 1


class ChunkTransfer:
    def __init__(
        self,
        client: PeerClient,
        ranking: PeerRanking,
        hash_part: str,
        nar_size: int,
        providers: list[str],
        *,
        executor: Executor | None = None,
        parallel: int = 2,
        batch: int = 8,
        window: int = 32,
        verify_ahead: int = 4,
        expected_root: bytes | None = None,
    ) -> None:
        self.client = client
        self.ranking = ranking
        self.hash_part = hash_part
        self.nar_size = nar_size
        self.providers = ranking.order(providers)
        self.executor = executor
        self.parallel = max(1, parallel)
        self.batch = max(1, batch)
        self.window = max(self.batch, window)
        self.verify_ahead = max(1, verify_ahead)
        self.expected_root = expected_root
        self.stats = TransferStats()
        self.reference: ChunkTable | None = None
        self._tables: dict[str, ChunkTable] = {}
        self._dropped: set[str] = set()

    # -- tables -------------------------------------------------------------------------------

    async def _table_of(self, provider: str) -> ChunkTable | None:
        """This provider's table if it agrees with the reference (None: do not use it)."""
        if provider in self._tables:
            return self._tables[provider]
        try:
            table = await self.client.chunk_table(provider, self.hash_part)
        except PeerMisbehaved as e:
            self._blame(provider, "bad-table", e)
            return None
        except PeerUnavailable as e:
            self._drop(provider, e)
            return None
        if table is None:
            self._drop(provider, "it no longer has the item")
            return None
        if table.nar_size != self.nar_size:
            self._blame(provider, "bad-table", "its chunk table is for another NarSize")
            return None
        if self.expected_root is not None and table.root != self.expected_root:
            self._blame(provider, "bad-table", "its chunk table does not hash to the chunk root")
            return None
        if self.reference is not None and table.digests != self.reference.digests:
            self._blame(provider, "bad-table", "its chunk digests disagree with another provider's")
            return None
        self._tables[provider] = table
        return table

    async def _establish_reference(self) -> None:
        for provider in self.providers:
            table = await self._table_of(provider)
            if table is not None:
                self.reference = table
                return
        raise TransferFailed(
            f"no provider of {self.hash_part} could give a usable chunk table "
            f"({len(self.providers)} tried)"
        )

    # -- bookkeeping --------------------------------------------------------------------------

    def _drop(self, provider: str, why: object) -> None:
        if provider not in self._dropped:
            log.info("not using provider %s for %s: %s", provider, self.hash_part, why)
        self._dropped.add(provider)
        self.ranking.record_unavailable(provider)

    def _blame(self, provider: str, reason: str, why: object) -> None:
        self._dropped.add(provider)
        self.stats.failed(reason)
        banned = self.ranking.record_misbehaved(provider)
        log.warning(
            "provider %s sent bad data for %s (%s)%s",
            provider,
            self.hash_part,
            why,
            "; banning it for a while" if banned else "",
        )

    # -- the transfer -------------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[VerifiedChunk]:
        """Yield every chunk of the item, verified, in order; raises TransferFailed."""
        await self._establish_reference()
        reference = self.reference
        assert reference is not None
        # Batches not yet fetched, lowest first: a batch put back after a failure is taken
        # again before anything further ahead, so the consumer is never starved.
        count = reference.count
        todo = [(f, min(self.batch, count - f)) for f in range(0, count, self.batch)]
        ready: dict[int, VerifiedChunk] = {}
        progress = asyncio.Condition()
        state = {"next": 0, "over": False}

        async def worker(provider: str) -> None:
            table = await self._table_of(provider)
            while table is not None and provider not in self._dropped:
                async with progress:
                    await progress.wait_for(lambda: not todo or next_batch_allowed())
                    if not todo:
                        return
                    first, count = heapq.heappop(todo)
                done = await self._fetch_batch(provider, table, first, count, ready, progress)
                if done < count:
                    self.stats.failovers += 1
                    async with progress:
                        heapq.heappush(todo, (first + done, count - done))
                        progress.notify_all()
                    return

        def next_batch_allowed() -> bool:
            return bool(todo) and todo[0][0] < state["next"] + self.window

        async def run_workers() -> None:
            running: dict[asyncio.Task, str] = {}
            try:
                while True:
                    busy = set(running.values())
                    for provider in self.providers:
                        if len(running) >= self.parallel or not todo:
                            break
                        if provider not in self._dropped and provider not in busy:
                            running[asyncio.create_task(worker(provider))] = provider
                            busy.add(provider)
                    if not running:
                        break
                    finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        del running[task]
                        task.result()
            finally:
                for task in running:
                    task.cancel()
                async with progress:
                    state["over"] = True
                    progress.notify_all()

        runner = asyncio.create_task(run_workers())
        try:
            for index in range(reference.count):
                async with progress:
                    await progress.wait_for(lambda i=index: i in ready or state["over"])
                    chunk = ready.pop(index, None)
                    if chunk is None:
                        raise TransferFailed(
                            f"{self.hash_part}: chunk {index} and after could not be fetched "
                            f"from any of {len(self.providers)} providers"
                        )
                    state["next"] = index + 1
                    progress.notify_all()
                yield chunk
        finally:
            if not runner.done():
                runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner

    async def _fetch_batch(
        self,
        provider: str,
        table: ChunkTable,
        first: int,
        count: int,
        ready: dict[int, VerifiedChunk],
        progress: asyncio.Condition,
    ) -> int:
        """Fetch and verify chunks first..first+count-1; returns how many were verified.

        Frames are verified in worker threads while the next ones are read (up to
        `verify_ahead` at once), so one provider's transfer is not held to the speed of one
        thread; results are taken in chunk order, and a bad chunk ends the batch there.
        """
        assert self.reference is not None
        reference = self.reference
        loop = asyncio.get_running_loop()
        done = 0
        started = time.monotonic()
        first_byte: float | None = None
        received = 0
        verifying: deque[tuple[int, bytes, asyncio.Future[bytes]]] = deque()

        async def settle() -> bool:
            """Take the oldest frame's verification; False when the chunk was bad."""
            nonlocal done, received
            index, frame, verified = verifying.popleft()
            try:
                data = await verified
            except ChunkTableError as e:
                self._blame(provider, "bad-chunk", f"chunk {index}: {e}")
                return False
            received += len(frame)
            self.stats.bytes_in += len(frame)
            self.stats.chunks += 1
            self.stats.providers_used.add(provider)
            async with progress:
                ready[index] = VerifiedChunk(index, frame, data, provider)
                progress.notify_all()
            done += 1
            return True

        async def settle_all() -> bool:
            while verifying:
                if not await settle():
                    return False
            return True

        try:
            frames = self.client.frames(provider, self.hash_part, table, first, count)
            async with contextlib.aclosing(frames):
                async for index, frame in frames:
                    if first_byte is None:
                        first_byte = time.monotonic() - started
                    chunk = reference.chunk(index)
                    verified = loop.run_in_executor(
                        self.executor, decompress_frame, frame, chunk.length, chunk.sha256
                    )
                    verifying.append((index, frame, verified))
                    while verifying and (
                        verifying[0][2].done() or len(verifying) >= self.verify_ahead
                    ):
                        if not await settle():
                            return done
            if not await settle_all():
                return done
        except PeerMisbehaved as e:
            # Frames that arrived whole before the bad response are still checked and kept.
            if await settle_all():
                self._blame(provider, "bad-response", e)
        except PeerUnavailable as e:
            await settle_all()
            self._drop(provider, e)
        else:
            self.ranking.record_success(
                provider, time.monotonic() - started, received, first_byte or 0.0
            )
        finally:
            for _, _, verified in verifying:
                verified.cancel()
        return done
