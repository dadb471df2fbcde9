"""ItemFetcher.stream: an item's NAR brought in from real peers while a client receives it.

The fetcher was only exercised through multi-node integration tests. Here its own contract is
checked with real parts: peer API servers on 127.0.0.1 over caches baked from a generated
store (honest, lying and dying ones from tests/net/peer_servers.py), a real CacheIndex and
NarStore in tmp_path, real zstd. What must hold: the client gets the NAR's exact bytes; the
item is committed (NAR file, index, on_cached, on_transfer "ok") only after the whole NAR
hashed to NarHash and `before_commit` accepted it, the last piece being held back until then;
liars are caught by chunk digests or the expected chunk root, penalized, and replaced by
honest providers; any failure or an early stop of the consumer leaves nothing in the cache,
not even a temp file.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
import zstandard

from p2pcache.cache.chunk_table import CHUNK_SIZE, chunk_count, decode_chunk_table
from p2pcache.cache.index import CacheIndex, IndexedItem, NewItem, Origin, State
from p2pcache.cache.nar_store import NarStore
from p2pcache.errors import P2PCacheError
from p2pcache.fetcher import FetchedNarMismatch, FetchSettings, ItemFetcher
from p2pcache.guix.nar import iter_nar
from p2pcache.guix.narinfo import format_nar_hash
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.net.transfer import TransferFailed, TransferStats
from p2pcache.publisher import new_item_from_store
from p2pcache.testing import generate_test_store, remove_test_store
from tests.net.peer_servers import CorruptingPeerAPI, DyingPeerAPI, peer_server
from tests.seeded_cache import SeededCache, seed_cache

HOST = "127.0.0.1"


@pytest.fixture(scope="module", name="big_item")
def big_item_fixture(tmp_path_factory):
    """A generated store and its largest item (about 5.4 MiB of NAR: six chunks), with the
    item's NAR as written by our own serializer."""
    root = tmp_path_factory.mktemp("fetcher-store") / "root"
    store = generate_test_store(root, items=12, seed=7, large_items=1, max_file_size=6 << 20)
    info = max(store.items, key=lambda i: i.nar_size)
    nar = b"".join(iter_nar(store.real_path(info.path)))
    assert hashlib.sha256(nar).digest() == info.nar_sha256 and len(nar) == info.nar_size
    assert chunk_count(info.nar_size) >= 5  # enough chunks for batches, failovers, hold-back
    yield store, info, nar
    remove_test_store(root)


@dataclass
class Local:
    """The fetching node's own cache: the item is accepted (known) but not held."""

    index: CacheIndex
    nar_store: NarStore
    item: IndexedItem

    def temp_files(self) -> list:
        return [p for p in self.nar_store.temps.rglob("*") if p.is_file()]

    def assert_nothing_cached(self, before: IndexedItem) -> None:
        assert self.index.get(self.item.hash_part) == before
        assert list(self.nar_store.iter_names()) == []
        assert self.temp_files() == []


@dataclass
class Setup:
    nar: bytes
    sources: list[SeededCache]
    """Two independent caches holding the item, to serve it from."""
    local: Local
    root: bytes
    """The chunk root of the item's NAR, as a baking node computed it."""
    new: NewItem
    """How the item was added to the local index."""


@pytest.fixture
async def setup(tmp_path, big_item):
    store, info, nar = big_item
    key = generate_key_pair()
    sources = [await seed_cache(tmp_path / f"peer{n}", store, key, [info]) for n in range(2)]
    index = CacheIndex(tmp_path / "local" / "index.sqlite")
    await index.open()
    nar_store = NarStore(tmp_path / "local" / "nar")
    nar_store.prepare()
    # As the resolver leaves an item whose narinfo a peer gave: known, from a peer, unbaked.
    new = replace(new_item_from_store(info), origin=Origin.PEER, store_id=None)
    await index.add_items([new])
    item = index.get(new.hash_part)
    assert item is not None and item.state is State.UNBAKED and item.chunk_root is None
    root = sources[0].index.get(item.hash_part).chunk_root
    try:
        yield Setup(nar, sources, Local(index, nar_store, item), root, new)
    finally:
        await index.close()
        for source in sources:
            await source.index.close()


@dataclass
class Calls:
    """What the fetcher reported through its callbacks."""

    asked: list[str] = field(default_factory=list)
    cached: list[IndexedItem] = field(default_factory=list)
    transfers: list[tuple[str, TransferStats]] = field(default_factory=list)
    commits: list[tuple[IndexedItem, bytes]] = field(default_factory=list)

    @property
    def outcomes(self) -> list[str]:
        return [outcome for outcome, _ in self.transfers]


def make_fetcher(
    local: Local,
    session: aiohttp.ClientSession,
    ranking: PeerRanking,
    providers: list[str],
    calls: Calls,
    *,
    settings: FetchSettings | None = None,
    **seams,
) -> ItemFetcher:
    async def providers_of(hash_part: str) -> list[str]:
        calls.asked.append(hash_part)
        return list(providers)

    async def before_commit(item: IndexedItem, root: bytes) -> None:
        calls.commits.append((item, root))

    seams.setdefault("before_commit", before_commit)
    return ItemFetcher(
        local.index,
        local.nar_store,
        PeerClient(session),
        ranking,
        providers_of,
        settings=settings or FetchSettings(parallel=2, batch=2, window=8),
        on_cached=calls.cached.append,
        on_transfer=lambda outcome, stats: calls.transfers.append((outcome, stats)),
        **seams,
    )


async def drain(stream) -> tuple[list[bytes], P2PCacheError | None]:
    """Every piece the stream gives, and the P2PCacheError that ended it (None if none)."""
    pieces: list[bytes] = []
    try:
        async for piece in stream:
            pieces.append(piece)
    except P2PCacheError as e:
        return pieces, e
    return pieces, None


def transfer_tasks() -> list[asyncio.Task]:
    """Tasks still working for a ChunkTransfer (its workers and their runner)."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.startswith("ChunkTransfer.")
    ]


def last_chunk_length(nar_size: int) -> int:
    return nar_size - CHUNK_SIZE * (chunk_count(nar_size) - 1)


def assert_committed(setup: Setup) -> IndexedItem:
    """The item is baked in the index, and its NAR file holds exactly the NAR."""
    local = setup.local
    cached = local.index.get(local.item.hash_part)
    assert cached is not None and cached.is_baked and cached.state is State.BAKED
    assert cached.chunk_root == setup.root
    assert list(local.nar_store.iter_names()) == [cached.nar_file]
    assert local.temp_files() == []
    path = local.nar_store.path_of(cached.nar_file)
    assert path.stat().st_size == cached.file_size
    with open(path, "rb") as f:
        whole = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    assert whole == setup.nar
    table = decode_chunk_table(cached.chunk_table)
    assert table.root == setup.root and table.count == chunk_count(len(setup.nar))
    assert b"".join(local.nar_store.read_nar(cached.nar_file, table)) == setup.nar
    return cached


async def test_a_nar_from_one_provider_reaches_the_client_and_is_committed(setup):
    local, calls, ranking = setup.local, Calls(), PeerRanking()
    async with peer_server(setup.sources[0], HOST) as url, aiohttp.ClientSession() as session:
        fetcher = make_fetcher(local, session, ranking, [url], calls)
        pieces, error = await drain(fetcher.stream(local.item))
    assert error is None
    assert b"".join(pieces) == setup.nar
    assert len(pieces) == chunk_count(len(setup.nar))
    cached = assert_committed(setup)
    assert calls.asked == [local.item.hash_part]
    assert [(item.hash_part, root) for item, root in calls.commits] == [
        (local.item.hash_part, setup.root)
    ]
    assert [c.hash_part for c in calls.cached] == [local.item.hash_part]
    assert calls.cached[0] == cached and calls.cached[0].is_baked
    assert calls.outcomes == ["ok"]
    stats = calls.transfers[0][1]
    assert stats.providers_used == {url}
    assert stats.chunks == len(pieces) and stats.chunk_failures == {}
    assert stats.bytes_in == cached.file_size
    assert ranking.scores[url].successes >= 1 and ranking.scores[url].misbehaved == 0


async def test_no_provider_fails_with_transfer_failed_and_caches_nothing(setup):
    local, calls = setup.local, Calls()
    async with aiohttp.ClientSession() as session:
        fetcher = make_fetcher(local, session, PeerRanking(), [], calls)
        pieces, error = await drain(fetcher.stream(local.item))
    assert isinstance(error, TransferFailed)
    assert local.item.store_path in str(error)
    assert pieces == []
    assert calls.outcomes == ["no-provider"]
    assert calls.cached == [] and calls.commits == []
    local.assert_nothing_cached(local.item)


async def test_a_lying_provider_is_penalized_and_the_honest_one_completes_the_nar(setup):
    local, calls, ranking = setup.local, Calls(), PeerRanking()
    async with (
        peer_server(setup.sources[0], HOST, CorruptingPeerAPI) as liar,
        peer_server(setup.sources[1], HOST) as honest,
        aiohttp.ClientSession() as session,
    ):
        ranking.record_success(liar, 0.1, 10**9, 0.001)  # ranked first: it is asked first
        fetcher = make_fetcher(local, session, ranking, [honest, liar], calls)
        pieces, error = await drain(fetcher.stream(local.item))
    assert error is None
    assert b"".join(pieces) == setup.nar
    assert_committed(setup)
    assert calls.outcomes == ["ok"]
    stats = calls.transfers[0][1]
    assert stats.providers_used == {honest}
    assert stats.chunk_failures.get("bad-chunk", 0) >= 1
    assert ranking.scores[liar].misbehaved >= 1
    assert ranking.order([liar, honest]) == [honest, liar]
    assert ranking.scores[honest].misbehaved == 0


async def test_only_lying_providers_fail_the_stream_and_leave_no_file(setup):
    local, calls, ranking = setup.local, Calls(), PeerRanking()
    async with (
        peer_server(setup.sources[0], HOST, CorruptingPeerAPI) as liar1,
        peer_server(setup.sources[1], HOST, CorruptingPeerAPI) as liar2,
        aiohttp.ClientSession() as session,
    ):
        fetcher = make_fetcher(local, session, ranking, [liar1, liar2], calls)
        pieces, error = await drain(fetcher.stream(local.item))
    assert isinstance(error, TransferFailed)
    assert pieces == []  # every frame is corrupt: not one byte is given out
    assert calls.outcomes == ["failed"]
    assert calls.transfers[0][1].chunk_failures.get("bad-chunk", 0) >= 2
    assert ranking.scores[liar1].misbehaved >= 1 and ranking.scores[liar2].misbehaved >= 1
    assert calls.cached == [] and calls.commits == []
    local.assert_nothing_cached(local.item)


async def test_a_provider_dying_mid_transfer_is_replaced_and_the_nar_completes(setup):
    local, calls, ranking = setup.local, Calls(), PeerRanking()
    async with (
        peer_server(setup.sources[0], HOST, DyingPeerAPI) as dying,
        peer_server(setup.sources[1], HOST) as honest,
        aiohttp.ClientSession() as session,
    ):
        ranking.record_success(dying, 0.1, 10**9, 0.001)  # ranked first: it is asked first
        fetcher = make_fetcher(
            local, session, ranking, [honest, dying], calls,
            settings=FetchSettings(parallel=1, batch=4, window=8),
        )  # fmt: skip
        pieces, error = await drain(fetcher.stream(local.item))
    assert error is None
    assert b"".join(pieces) == setup.nar
    assert_committed(setup)
    assert calls.outcomes == ["ok"]
    stats = calls.transfers[0][1]
    assert stats.providers_used == {dying, honest}  # its first good chunks were kept
    assert stats.failovers >= 1
    assert ranking.scores[dying].unavailable >= 1 and ranking.scores[dying].misbehaved == 0


class Refused(P2PCacheError):
    """What a trust policy raises when it no longer accepts the item."""


async def test_before_commit_raising_cuts_the_stream_before_its_last_piece(setup):
    local, calls = setup.local, Calls()
    seen: list[tuple[IndexedItem, bytes]] = []

    async def refuse(item: IndexedItem, root: bytes) -> None:
        seen.append((item, root))
        raise Refused("a builder was found forking its log")

    async with peer_server(setup.sources[0], HOST) as url, aiohttp.ClientSession() as session:
        fetcher = make_fetcher(local, session, PeerRanking(), [url], calls, before_commit=refuse)
        pieces, error = await drain(fetcher.stream(local.item))
    assert isinstance(error, Refused)
    # Everything but the last chunk reached the client, verified; the last one was held back.
    received = b"".join(pieces)
    assert len(received) == len(setup.nar) - last_chunk_length(len(setup.nar))
    assert received == setup.nar[: len(received)]
    assert [(item.hash_part, root) for item, root in seen] == [(local.item.hash_part, setup.root)]
    assert calls.outcomes == ["failed"] and calls.cached == []
    local.assert_nothing_cached(local.item)


async def test_a_nar_not_hashing_to_the_accepted_nar_hash_is_refused_at_the_end(setup):
    """Peers agree on a NAR of the right size, but it is not the one the narinfo named."""
    local, calls, ranking = setup.local, Calls(), PeerRanking()
    other_hash = format_nar_hash(hashlib.sha256(b"another NAR").digest())
    await local.index.remove([local.item.hash_part])
    await local.index.add_items([replace(setup.new, nar_hash=other_hash)])
    item = local.index.get(local.item.hash_part)
    assert item.nar_hash == other_hash
    async with peer_server(setup.sources[0], HOST) as url, aiohttp.ClientSession() as session:
        fetcher = make_fetcher(local, session, ranking, [url], calls)
        pieces, error = await drain(fetcher.stream(item))
    assert isinstance(error, FetchedNarMismatch)
    received = b"".join(pieces)
    assert len(received) == len(setup.nar) - last_chunk_length(len(setup.nar))
    assert received == setup.nar[: len(received)]
    assert calls.commits == [] and calls.cached == [] and calls.outcomes == ["failed"]
    assert ranking.scores[url].misbehaved == 1
    local.assert_nothing_cached(item)


async def test_a_chunk_root_other_than_the_attested_one_is_refused_at_the_first_chunk(setup):
    local, calls, ranking = setup.local, Calls(), PeerRanking()
    asked: list[IndexedItem] = []

    def wrong_root(item: IndexedItem) -> bytes:
        asked.append(item)
        return hashlib.sha256(setup.root).digest()

    async with peer_server(setup.sources[0], HOST) as url, aiohttp.ClientSession() as session:
        fetcher = make_fetcher(local, session, ranking, [url], calls, expected_root=wrong_root)
        pieces, error = await drain(fetcher.stream(local.item))
        assert isinstance(error, TransferFailed)
        assert pieces == []
        assert asked == [local.item]
        assert calls.outcomes == ["failed"]
        assert calls.transfers[0][1].chunk_failures == {"bad-table": 1}
        assert calls.transfers[0][1].chunks == 0
        assert ranking.scores[url].misbehaved == 1
        local.assert_nothing_cached(local.item)
        # The same provider, checked against the root it really has, is accepted.
        right = make_fetcher(
            local, session, PeerRanking(), [url], calls, expected_root=lambda item: setup.root
        )
        pieces, error = await drain(right.stream(local.item))
    assert error is None and b"".join(pieces) == setup.nar
    assert_committed(setup)


async def test_a_consumer_stopping_after_the_first_piece_leaves_nothing_behind(setup):
    local, calls = setup.local, Calls()
    async with peer_server(setup.sources[0], HOST) as url, aiohttp.ClientSession() as session:
        # A window of one chunk: the transfer cannot run to its end ahead of the consumer.
        settings = FetchSettings(parallel=1, batch=1, window=1)
        fetcher = make_fetcher(local, session, PeerRanking(), [url], calls, settings=settings)
        stream = fetcher.stream(local.item)
        first = await anext(stream)
        assert first == setup.nar[:CHUNK_SIZE]
        assert len(local.temp_files()) == 1  # the frames are being written to a temp file
        assert transfer_tasks() != []  # waiting for the consumer to take more
        await stream.aclose()
        assert local.temp_files() == []
        # The transfer is closed with it, at once: its downloads are over.
        assert transfer_tasks() == []
    assert calls.commits == [] and calls.cached == []
    assert "ok" not in calls.outcomes
    local.assert_nothing_cached(local.item)
    # The stream is finished. (Not asked for another piece: after closing a generator whose
    # cleanup closed another one, CPython 3.11 answers "already running".)
    assert stream.ag_frame is None
