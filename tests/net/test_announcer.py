"""The announcer: new items first, then popular ones, then the rest; within a budget."""

from __future__ import annotations

import asyncio

import pytest

from p2pcache.net.announcer import Announcer, AnnouncerConfig
from p2pcache.net.dht_store import StoreReport
from tests.net.dht_network import FakeClock, dht_network


class RecordingDHT:
    """Stands in for DHTNode.announce_many / withdraw and remembers the calls."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[tuple[list[str], dict]] = []
        self.withdrawn: list[str] = []
        self.fail = fail

    async def announce_many(self, hash_parts, derivations, endpoint_url, ttl=None):
        if self.fail:
            raise OSError("the network is down")
        self.batches.append((list(hash_parts), dict(derivations)))
        return StoreReport(keys=len(hash_parts) + len(derivations), walk_queries=3)

    def withdraw(self, hash_parts=(), drv_hash_parts=()):
        self.withdrawn.extend(hash_parts)


def items(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:031d}"[:32] for i in range(count)]


def announcer(dht, clock, **config) -> Announcer:
    defaults = {"keys_per_second": 10.0, "batch_size": 4, "min_batch": 1}
    return Announcer(dht, "http://x:1", AnnouncerConfig(**(defaults | config)), clock=clock)


async def test_new_items_go_first_then_popular_then_the_rest():
    dht, clock = RecordingDHT(), FakeClock()
    a = announcer(dht, clock, batch_size=100)
    old = items("o", 5)
    a.add_existing(old)
    for _ in range(3):
        a.note_requested(old[4])
    a.note_requested(old[2])
    a.add_new(items("n", 2))
    await a.announce_next_batch()
    ((announced, _),) = dht.batches
    assert announced == [*items("n", 2), old[4], old[2], old[0], old[1], old[3]]


async def test_the_budget_limits_keys_per_second():
    dht, clock = RecordingDHT(), FakeClock()
    a = announcer(dht, clock, keys_per_second=10.0, batch_size=20, min_batch=5)
    a.add_existing(items("o", 100))
    await a.announce_next_batch()
    assert len(dht.batches[-1][0]) == 20  # the burst
    assert await a.announce_next_batch() is None  # no budget left for a worthwhile batch
    assert a.delay_for_next_batch() == pytest.approx(0.5)
    clock.advance(1.0)
    await a.announce_next_batch()
    assert len(dht.batches[-1][0]) == 10
    assert a.pending == 70 and a.stats.announced == 30 and a.stats.batches == 2


async def test_items_are_announced_once_and_withdrawn_ones_dropped():
    dht, clock = RecordingDHT(), FakeClock()
    a = announcer(dht, clock, batch_size=10)
    a.add_new(items("n", 3))
    await a.announce_next_batch()
    a.add_existing(items("n", 3))  # already announced: the DHT node re-announces them
    a.add_existing(items("o", 2))
    a.withdraw([items("o", 2)[0]])
    await a.announce_next_batch()
    assert [batch for batch, _ in dht.batches] == [items("n", 3), [items("o", 2)[1]]]
    assert dht.withdrawn == [items("o", 2)[0]]


async def test_a_failed_batch_goes_back_to_the_queue():
    dht, clock = RecordingDHT(fail=True), FakeClock()
    a = announcer(dht, clock, batch_size=10)
    a.add_new(items("n", 3))
    with pytest.raises(OSError):
        await a.announce_next_batch()
    assert a.pending == 3
    dht.fail = False
    clock.advance(1)
    await a.announce_next_batch()
    assert dht.batches[0][0] == items("n", 3)


async def test_derivation_outputs_share_the_queue():
    dht, clock = RecordingDHT(), FakeClock()
    a = announcer(dht, clock, batch_size=10)
    a.add_existing(items("o", 1))
    a.add_outputs("d" * 32, {"out": "/gnu/store/" + "a" * 32 + "-x"}, new=True)
    await a.announce_next_batch()
    ((hash_parts, derivations),) = dht.batches
    assert hash_parts == items("o", 1)
    assert derivations == {"d" * 32: {"out": "/gnu/store/" + "a" * 32 + "-x"}}


async def test_the_queue_is_bounded():
    a = announcer(RecordingDHT(), FakeClock(), max_queued=10)
    a.add_existing(items("o", 15))
    assert a.pending == 10 and a.stats.dropped == 5


async def test_the_background_task_announces_into_a_real_network():
    hash_parts = ["0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z", "1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"]
    async with dht_network(6) as nodes:
        a = Announcer(
            nodes[0],
            "http://x:1",
            AnnouncerConfig(keys_per_second=1000, batch_size=10, min_batch=1),
        )
        await a.start()
        try:
            a.add_new(hash_parts)
            for _ in range(100):
                if a.stats.announced == 2:
                    break
                await asyncio.sleep(0.01)
            assert a.stats.announced == 2 and a.stats.requests > 0
            for hash_part in hash_parts:
                assert (await nodes[4].find_providers(hash_part)).found
        finally:
            await a.stop()


async def test_request_counts_are_bounded_and_forgotten_once_announced():
    dht, clock = RecordingDHT(), FakeClock()
    a = announcer(dht, clock, batch_size=10, max_queued=5)
    old = items("o", 3)
    a.add_existing(old)
    for name in items("x", 20):  # asked for, never held: counted for at most max_queued
        a.note_requested(name)
    assert sum(a.request_count(name) for name in items("x", 20)) == 5
    await a.announce_next_batch()
    a.note_requested(old[0])  # announced already: the DHT node keeps it announced
    assert a.request_count(old[0]) == 0
