"""The size quota: least recently used NARs are evicted down to the low-water mark."""

import pytest

from p2pcache.cache.index import CacheIndex, NewItem, Origin, State
from p2pcache.cache.nar_store import NarStore
from p2pcache.cache.quota import LOW_WATER, QuotaKeeper
from p2pcache.metrics import NodeMetrics

HASHES = [c * 31 + "0" for c in "abcdfghijk"]


@pytest.fixture
async def filled(tmp_path):
    nar_store = NarStore(tmp_path / "nar")
    nar_store.prepare()
    async with CacheIndex(tmp_path / "index.sqlite") as index:
        for i, h in enumerate(HASHES):
            origin = Origin.STORE if i % 2 == 0 else Origin.PEER
            await index.add_items(
                [NewItem(h, f"/gnu/store/{h}-x", "sha256:" + "0" * 52, 10, (), None, origin)]
            )
            with nar_store.writing() as pending:
                pending.file.write(b"z" * 1000)
                name = nar_store.commit(pending, h)
            await index.mark_baked(h, name, 1000, b"t", b"r")
            await index.touch({h: 1_000_000 + i})  # HASHES[0] is the least recently used
        yield index, nar_store


async def test_under_quota_nothing_happens(filled):
    index, nar_store = filled
    keeper = QuotaKeeper(index, nar_store, 10_000, NodeMetrics(), lambda h: None)
    report = await keeper.enforce()
    assert report.items == 0 and report.size_after == 10_000


async def test_evicts_least_recently_used_to_low_water(filled):
    index, nar_store = filled
    forgotten = []
    metrics = NodeMetrics()
    keeper = QuotaKeeper(index, nar_store, 5_000, metrics, forgotten.append)
    report = await keeper.enforce()
    assert report.size_after <= 5_000 * LOW_WATER
    assert report.items == 6 and forgotten == HASHES[:6]
    assert len(list(nar_store.iter_names())) == 4
    # Store items stay known (served from the store), others are forgotten.
    assert index.get(HASHES[0]).state is State.UNBAKED
    assert index.get(HASHES[1]) is None
    assert index.get(HASHES[9]).is_baked
    assert metrics.registry.get_sample_value("p2pcache_cache_evictions_total") == 6


async def test_explicit_limit_for_cache_gc(filled):
    index, nar_store = filled
    keeper = QuotaKeeper(index, nar_store, 10**9, NodeMetrics(), lambda h: None)
    report = await keeper.enforce(max_size=3_000)
    assert report.size_after == 3_000 and report.items == 7
