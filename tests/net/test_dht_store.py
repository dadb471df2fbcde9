"""Grouped placement: every key reaches its k closest live nodes, for a fraction of the cost."""

from __future__ import annotations

import time
from dataclasses import replace

from kademlia.network import Server

from p2pcache.net.dht_store import RecordPlacer
from p2pcache.net.provider_record import ProviderRecord, provider_key, sign_record
from tests.net.dht_network import dht_network, fresh_address, with_config

SMALL_K = with_config(ksize=6)


def hash_parts(count: int, salt: str = "") -> list[str]:
    import hashlib

    from p2pcache.guix import nix32

    return [nix32.encode(hashlib.sha1(f"{salt}{i}".encode()).digest()) for i in range(count)]


def signed(node, hash_part: str, ttl: int = 3600):
    now = int(node.clock())
    record = ProviderRecord(node.identity.public_key, "http://x:1", now, now + ttl)
    return sign_record(provider_key(hash_part), record, node.identity.signing_key)


def holders(nodes, key: bytes) -> set[bytes]:
    return {n.node_id for n in nodes if n.storage.records(key)}


def true_closest(nodes, key: bytes, k: int) -> set[bytes]:
    target = int.from_bytes(key, "big")
    return {n.node_id for n in sorted(nodes, key=lambda n: n.node.long_id ^ target)[:k]}


async def test_each_key_reaches_exactly_its_k_closest_nodes():
    async with dht_network(40, SMALL_K) as nodes:
        announcer = nodes[0]
        items = hash_parts(300)
        report = await announcer.announce(items, "http://x:1")
        assert report.keys == report.keys_placed == 300
        assert report.walks < 300 / 4  # keys of a region share a walk
        for hash_part in items:
            key = provider_key(hash_part)
            # The k closest other nodes (the announcer keeps its own records anyway), as a
            # lookup of that one key would have found them.
            assert holders(nodes[1:], key) == true_closest(nodes[1:], key, 6)


async def test_grouped_placement_costs_a_fraction_of_one_lookup_per_key():
    async with dht_network(40, SMALL_K) as nodes:
        announcer = nodes[0]
        grouped = await announcer.placer.place([signed(announcer, h) for h in hash_parts(200)])
        naive = await announcer.placer.place_one_by_one(
            [signed(announcer, h) for h in hash_parts(200, "naive")]
        )
        assert naive.keys_placed == grouped.keys_placed == 200
        assert grouped.requests * 5 < naive.requests
        assert min(naive.replicas_per_key) >= 5 and min(grouped.replicas_per_key) >= 5


async def test_a_stock_node_gets_plain_stores_and_is_remembered():
    async with dht_network(3) as nodes:
        stock = Server(ksize=20, alpha=3)
        await stock.listen(0, interface=fresh_address())
        try:
            await stock.bootstrap([nodes[0].address])
            placer = nodes[1].placer
            items = hash_parts(5)
            first = await placer.place([signed(nodes[1], h) for h in items])
            assert first.keys_placed == 5 and min(first.replicas_per_key) == 4
            assert all(stock.storage.get(provider_key(h)) is not None for h in items)
            sent = nodes[1].stats.rpcs_sent["store_many"]
            started = time.monotonic()
            await placer.place([signed(nodes[1], h) for h in hash_parts(5, "again")])
            assert nodes[1].stats.rpcs_sent["store_many"] == sent + 2  # not to the stock node
            assert time.monotonic() - started < nodes[1].config.rpc_timeout
        finally:
            stock.stop()


async def test_placement_can_be_paced():
    async with dht_network(10) as nodes:
        announcer = nodes[0]
        placer = RecordPlacer(
            announcer.protocol,
            announcer.storage,
            replace(announcer.config.placement_config(), requests_per_second=20),
            announcer.config.crawl_config(),
            clock=announcer.clock,
        )
        started = time.monotonic()
        report = await placer.place([signed(announcer, h) for h in hash_parts(3)])
        elapsed = time.monotonic() - started
        assert report.store_requests >= 9
        assert elapsed >= (report.store_requests - 20) / 20 * 0.9 and elapsed < 2
