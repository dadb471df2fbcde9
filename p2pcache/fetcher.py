"""Bringing an item from peers into the cache while a Guix client receives it.

The NAR request for an item the node knows (its narinfo was accepted) but does not hold yet:
chunks come from providers (net/transfer), each checked against its digest; the verified
uncompressed bytes go to the client as they arrive, and the providers' frames go into a temp
file in the cache. The last chunk is held back until the whole NAR hashes to NarHash and
NarSize, and the trust policy, asked again through `before_commit`, still accepts the item
(a builder may have been found forking its log meanwhile, and the chunk root of the bytes
must be the one the builders attested); only then is the file committed, the index updated
and the item announced. Chunks are checked from the start against the chunk root the
builders attested (`expected_root`), so a peer sending other bytes is caught at its first
chunk and penalized. Any failed check cuts the client's stream (the server aborts the
connection; before the first byte, the Guix endpoint answers 502 instead) and leaves nothing
in the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from p2pcache.cache.chunk_table import ChunkTable
from p2pcache.cache.index import CacheIndex, IndexedItem
from p2pcache.cache.nar_store import NarStore, PendingFile
from p2pcache.errors import P2PCacheError
from p2pcache.guix.nar import NarHasher
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.net.transfer import ChunkTransfer, TransferFailed, TransferStats, VerifiedChunk

log = logging.getLogger(__name__)

ProvidersOf = Callable[[str], Awaitable[list[str]]]
BeforeCommit = Callable[[IndexedItem, bytes], Awaitable[None]]
"""`(item, chunk root of the verified NAR)`: raises (e.g. PolicyRejected) to keep it out."""
ExpectedRoot = Callable[[IndexedItem], bytes | None]


async def _commit_anything(item: IndexedItem, chunk_root: bytes) -> None:
    return None


class FetchedNarMismatch(P2PCacheError):
    """The NAR assembled from verified chunks does not hash to the accepted NarHash."""


@dataclass
class FetchSettings:
    parallel: int = 2
    batch: int = 8
    window: int = 32


class ItemFetcher:
    def __init__(
        self,
        index: CacheIndex,
        nar_store: NarStore,
        client: PeerClient,
        ranking: PeerRanking,
        providers_of: ProvidersOf,
        *,
        executor: Executor | None = None,
        settings: FetchSettings | None = None,
        on_cached: Callable[[IndexedItem], None] = lambda item: None,
        on_transfer: Callable[[str, TransferStats], None] = lambda outcome, stats: None,
        before_commit: BeforeCommit = _commit_anything,
        expected_root: ExpectedRoot = lambda item: item.chunk_root,
    ) -> None:
        self.before_commit = before_commit
        self.expected_root = expected_root
        self.index = index
        self.nar_store = nar_store
        self.client = client
        self.ranking = ranking
        self.providers_of = providers_of
        self.executor = executor
        self.settings = settings or FetchSettings()
        self.on_cached = on_cached
        self.on_transfer = on_transfer

    async def stream(self, item: IndexedItem) -> AsyncIterator[bytes]:
        """The item's uncompressed NAR, fetched from peers, verified, and committed at the end
        (one at a time per item: the caller's FetchesInProgress)."""
        loop = asyncio.get_running_loop()
        providers = await self.providers_of(item.hash_part)
        if not providers:
            self.on_transfer("no-provider", TransferStats())
            raise TransferFailed(f"no provider is known for {item.store_path}")
        transfer = ChunkTransfer(
            self.client,
            self.ranking,
            item.hash_part,
            item.nar_size,
            providers,
            executor=self.executor,
            parallel=self.settings.parallel,
            batch=self.settings.batch,
            window=self.settings.window,
            expected_root=self.expected_root(item),
        )
        started = time.monotonic()
        hasher = NarHasher()
        frame_sizes: list[int] = []
        held: VerifiedChunk | None = None
        with self.nar_store.writing() as pending:
            try:
                # Closed where it stands if the client stops early (its downloads end at
                # once), not later by the garbage collector.
                async with contextlib.aclosing(transfer.chunks()) as chunks:
                    async for chunk in chunks:
                        await loop.run_in_executor(self.executor, _keep, pending, hasher, chunk)
                        frame_sizes.append(len(chunk.frame))
                        if held is not None:
                            yield held.data
                        held = chunk
                summary = hasher.summary()
                if summary.nar_hash != item.nar_hash or summary.size != item.nar_size:
                    for provider in transfer.stats.providers_used:
                        self.ranking.record_misbehaved(provider)
                    raise FetchedNarMismatch(
                        f"{item.store_path} from peers hashes to {summary.nar_hash} "
                        f"({summary.size} bytes), not the accepted {item.nar_hash}"
                    )
                reference = transfer.reference
                assert reference is not None
                table = ChunkTable(item.nar_size, tuple(frame_sizes), reference.digests)
                await self.before_commit(item, table.root)
                name = await loop.run_in_executor(
                    self.executor, self.nar_store.commit, pending, item.hash_part
                )
            except P2PCacheError as e:
                self.on_transfer("failed", transfer.stats)
                log.warning("fetching %s from peers failed: %s", item.store_path, e)
                raise
        await self.index.mark_baked(
            item.hash_part, name, table.file_size, table.encode(), table.root
        )
        seconds = time.monotonic() - started
        self.on_transfer("ok", transfer.stats)
        log.info(
            "fetched %s from %d peer(s) (%d bytes of NAR in %.2f s, %.0f MB/s), hash verified",
            item.basename,
            len(transfer.stats.providers_used),
            item.nar_size,
            seconds,
            item.nar_size / max(seconds, 1e-6) / 1e6,
        )
        cached = self.index.get(item.hash_part)
        if cached is not None:
            self.on_cached(cached)
        if held is not None:
            yield held.data


def _keep(pending: PendingFile, hasher: NarHasher, chunk: VerifiedChunk) -> None:
    """Append a verified frame to the cache file and hash its data (in a worker thread)."""
    pending.file.write(chunk.frame)
    hasher.update(chunk.data)
