"""Chunk transfers from several real providers: parallel, verified, failing over by index."""

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.net.transfer import ChunkTransfer, TransferFailed
from p2pcache.testing import generate_test_store, remove_test_store
from tests.net.peer_servers import (
    CorruptingFromPeerAPI,
    CorruptingPeerAPI,
    DyingPeerAPI,
    peer_server,
)
from tests.seeded_cache import seed_cache


@pytest.fixture(scope="module")
def multichunk_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("multichunk") / "root"
    store = generate_test_store(root, items=12, seed=3, large_items=2, max_file_size=6 << 20)
    yield store
    remove_test_store(root)


@pytest.fixture
async def caches(tmp_path, multichunk_store):
    """Three independent caches of the same big item (so frame sizes may differ)."""
    item = max(multichunk_store.items, key=lambda i: i.nar_size)
    key = generate_key_pair()
    made = [await seed_cache(tmp_path / f"c{n}", multichunk_store, key, [item]) for n in range(3)]
    yield item, made
    for cache in made:
        await cache.index.close()


async def collect(transfer):
    chunks = [c async for c in transfer.chunks()]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    return b"".join(c.data for c in chunks), chunks


async def test_parallel_transfer_from_two_honest_providers(caches):
    item, (a, b, _) = caches
    async with (
        peer_server(a, "127.0.4.1") as url_a,
        peer_server(b, "127.0.5.1") as url_b,
        aiohttp.ClientSession() as session,
    ):
        transfer = ChunkTransfer(
            PeerClient(session), PeerRanking(), a.hash_parts[0], item.nar_size,
            [url_a, url_b], parallel=2, batch=1,
        )  # fmt: skip
        data, chunks = await collect(transfer)
    assert hashlib.sha256(data).digest() == item.nar_sha256
    assert len(chunks) >= 4
    assert {c.provider for c in chunks} == {url_a, url_b}


async def test_a_lying_provider_is_penalized_and_the_transfer_completes(caches):
    item, (a, b, _) = caches
    ranking = PeerRanking(ban_after=3)
    async with (
        peer_server(a, "127.0.6.1", CorruptingPeerAPI) as liar,
        peer_server(b, "127.0.7.1") as honest,
        aiohttp.ClientSession() as session,
    ):
        transfer = ChunkTransfer(
            PeerClient(session), ranking, a.hash_parts[0], item.nar_size,
            [liar, honest], parallel=2, batch=2,
        )  # fmt: skip
        data, chunks = await collect(transfer)
    assert hashlib.sha256(data).digest() == item.nar_sha256
    assert {c.provider for c in chunks} == {honest}
    assert transfer.stats.chunk_failures.get("bad-chunk", 0) >= 1
    assert ranking.scores[liar].misbehaved >= 1


async def test_a_provider_dying_mid_transfer_is_replaced_by_chunk_index(caches):
    item, (a, b, _) = caches
    async with (
        peer_server(a, "127.0.8.1", DyingPeerAPI) as dying,
        peer_server(b, "127.0.9.1") as honest,
        aiohttp.ClientSession() as session,
    ):
        ranking = PeerRanking()
        ranking.record_success(dying, 0.1, 10**9, 0.001)  # rank it first
        transfer = ChunkTransfer(
            PeerClient(session), ranking, a.hash_parts[0], item.nar_size,
            [honest, dying], parallel=1, batch=4,
        )  # fmt: skip
        data, chunks = await collect(transfer)
    assert hashlib.sha256(data).digest() == item.nar_sha256
    providers = [c.provider for c in chunks]
    assert providers[0] == dying and providers[-1] == honest
    assert ranking.scores[dying].unavailable >= 1 and ranking.scores[dying].misbehaved == 0
    assert transfer.stats.failovers >= 1  # the dying provider's batch went to the honest one


async def test_a_transfer_without_trouble_counts_no_failover(caches):
    item, (a, b, _) = caches
    async with (
        peer_server(a, "127.0.14.1") as url_a,
        peer_server(b, "127.0.15.1") as url_b,
        aiohttp.ClientSession() as session,
    ):
        transfer = ChunkTransfer(
            PeerClient(session), PeerRanking(), a.hash_parts[0], item.nar_size,
            [url_a, url_b], parallel=2, batch=2,
        )  # fmt: skip
        await collect(transfer)
    assert transfer.stats.failovers == 0


async def test_only_liars_fail_the_transfer_and_get_banned(caches):
    item, (a, b, _) = caches
    ranking = PeerRanking(ban_after=2)
    async with (
        peer_server(a, "127.0.10.1", CorruptingPeerAPI) as liar1,
        peer_server(b, "127.0.11.1", CorruptingPeerAPI) as liar2,
        aiohttp.ClientSession() as session,
    ):
        for _ in range(2):
            transfer = ChunkTransfer(
                PeerClient(session), ranking, a.hash_parts[0], item.nar_size, [liar1, liar2]
            )
            with pytest.raises(TransferFailed):
                await collect(transfer)
    assert ranking.is_banned(liar1) and ranking.is_banned(liar2)


async def test_tables_for_another_size_or_root_are_refused(caches):
    item, (a, _, _) = caches
    async with peer_server(a, "127.0.12.1") as url, aiohttp.ClientSession() as session:
        ranking = PeerRanking()
        wrong_size = ChunkTransfer(
            PeerClient(session), ranking, a.hash_parts[0], item.nar_size + 1, [url]
        )
        with pytest.raises(TransferFailed, match="usable chunk table"):
            await collect(wrong_size)
        wrong_root = ChunkTransfer(
            PeerClient(session), ranking, a.hash_parts[0], item.nar_size, [url],
            expected_root=b"\0" * 32,
        )  # fmt: skip
        with pytest.raises(TransferFailed):
            await collect(wrong_root)
        assert ranking.scores[url].misbehaved == 2


async def test_no_provider_at_all(caches):
    item, (a, _, _) = caches
    async with aiohttp.ClientSession() as session:
        transfer = ChunkTransfer(
            PeerClient(session), PeerRanking(), a.hash_parts[0], item.nar_size,
            ["http://127.0.13.1:9"],
        )  # fmt: skip
        with pytest.raises(TransferFailed):
            await collect(transfer)


class SlowCountingExecutor(ThreadPoolExecutor):
    """A real thread pool whose tasks take at least 30 ms; records how many ran at once."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.running = self.most = 0
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        def slow():
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(0.03)
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return super().submit(slow)


async def test_one_providers_chunks_are_verified_concurrently(caches):
    """One provider must not be held to one verifying thread (frames are read meanwhile)."""
    item, (a, _, _) = caches
    executor = SlowCountingExecutor()
    try:
        async with peer_server(a, "127.0.14.1") as url, aiohttp.ClientSession() as session:
            transfer = ChunkTransfer(
                PeerClient(session), PeerRanking(), a.hash_parts[0], item.nar_size, [url],
                executor=executor, parallel=1, batch=8, verify_ahead=4,
            )  # fmt: skip
            data, chunks = await collect(transfer)
    finally:
        executor.shutdown()
    assert hashlib.sha256(data).digest() == item.nar_sha256
    assert len(chunks) >= 4
    assert executor.most >= 2


async def test_chunks_after_a_bad_one_in_a_batch_come_from_another_provider(caches):
    """Verified ahead or not, nothing the liar sent from its first bad chunk on is used."""
    item, (a, b, _) = caches
    ranking = PeerRanking()
    async with (
        peer_server(a, "127.0.15.1", CorruptingFromPeerAPI) as liar,
        peer_server(b, "127.0.16.1") as honest,
        aiohttp.ClientSession() as session,
    ):
        ranking.record_success(liar, 0.1, 10**9, 0.001)  # rank it first
        transfer = ChunkTransfer(
            PeerClient(session), ranking, a.hash_parts[0], item.nar_size, [honest, liar],
            parallel=1, batch=8, verify_ahead=4,
        )  # fmt: skip
        data, chunks = await collect(transfer)
    assert hashlib.sha256(data).digest() == item.nar_sha256
    bad_from = CorruptingFromPeerAPI.bad_from
    assert [c.provider for c in chunks] == [liar] * bad_from + [honest] * (len(chunks) - bad_from)
    assert transfer.stats.chunk_failures == {"bad-chunk": 1}
    assert ranking.scores[liar].misbehaved == 1
