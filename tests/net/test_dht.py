"""DHTNode on real UDP sockets: announce, find, expire, re-announce, state, stock interop."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from p2pcache.net.dht import DHTNode
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.provider_record import decode_value, provider_key
from tests.net.dht_network import (
    TEST_CONFIG,
    FakeClock,
    dht_network,
    fresh_address,
    start_node,
    with_config,
)

HASH = "0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z"
OTHER = "1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"
DRV = "9gq4sfbbfs4zrfqzb4v2dcsnx8z5cy3j"


def endpoint(node: DHTNode) -> str:
    return f"http://{node.address[0]}:8081"


async def test_five_providers_of_one_item_are_all_found_from_anywhere():
    async with dht_network(30) as nodes:
        providers = nodes[:5]
        for node in providers:
            report = await node.announce([HASH], endpoint(node))
            assert report.keys_placed == 1 and report.replicas >= 15
        expected = {n.identity.public_key: endpoint(n) for n in providers}
        for seeker in nodes[10:16]:
            result = await seeker.find_providers(HASH)
            found = {r.public_key: r.endpoint for r in result.providers}
            assert found == expected
            assert result.complete
        stats = nodes[12].stats
        assert stats.lookups[("providers", "found")] == 1
        assert stats.routing_table_size > 10
        assert sum(stats.lookup_rounds.values()) == 1


async def test_records_expire_by_their_signed_time_without_any_message():
    clock = FakeClock()
    async with dht_network(8, clock=clock) as nodes:
        await nodes[0].announce([HASH], endpoint(nodes[0]), ttl=60)
        assert (await nodes[5].find_providers(HASH)).found
        clock.advance(60)
        result = await nodes[5].find_providers(HASH)
        assert not result.found
        assert sum(n.storage.record_count for n in nodes) == 0


async def test_a_node_re_announces_its_own_records_at_half_their_lifetime_and_only_those():
    clock = FakeClock()
    async with dht_network(8, clock=clock) as nodes:
        owner, holder = nodes[0], nodes[3]
        await owner.announce([HASH], endpoint(owner), ttl=100)
        first = holder.storage.records(provider_key(HASH))[0].record
        clock.advance(49)
        assert (await owner.reannounce_due()).keys == 0
        clock.advance(1)
        assert (await holder.reannounce_due()).keys == 0  # holds the record, does not own it
        report = await owner.reannounce_due()
        assert report.keys == 1 and report.keys_placed == 1
        renewed = holder.storage.records(provider_key(HASH))[0].record
        assert renewed.issued == first.issued + 50 and renewed.expires == first.expires + 50
        clock.advance(60)  # past the first record's expiry, within the renewed one's
        assert (await nodes[6].find_providers(HASH)).found


async def test_withdrawn_items_are_not_re_announced():
    clock = FakeClock()
    async with dht_network(4, clock=clock) as nodes:
        await nodes[0].announce([HASH, OTHER], endpoint(nodes[0]), ttl=100)
        nodes[0].withdraw([HASH])
        clock.advance(50)
        report = await nodes[0].reannounce_due()
        assert report.keys == 1
        assert nodes[0].announced_count() == 1


async def test_derivation_outputs_are_announced_and_found():
    async with dht_network(10) as nodes:
        outputs = {"out": f"/gnu/store/{HASH}-hello-2.12", "doc": f"/gnu/store/{OTHER}-hello-doc"}
        await nodes[2].announce_outputs(DRV, outputs, endpoint(nodes[2]))
        result = await nodes[7].find_outputs(DRV)
        (record,) = result.outputs
        assert record.output_paths() == outputs
        assert record.node_id == nodes[2].node_id
        assert not (await nodes[7].find_providers(DRV)).found  # another key entirely


async def test_a_bad_endpoint_is_refused_before_anything_is_sent():
    async with dht_network(3) as nodes:
        sent = nodes[0].stats.datagrams_sent
        with pytest.raises(ValueError):
            await nodes[0].announce([HASH], "ftp://nowhere")
        with pytest.raises(ValueError):
            await nodes[0].announce([HASH], endpoint(nodes[0]), ttl=86401)
        assert nodes[0].stats.datagrams_sent == sent
        assert nodes[0].announced_count() == 0


async def test_neighbours_are_saved_as_json_and_rejoin_a_restarted_node(tmp_path):
    state = tmp_path / "dht-neighbours.json"
    async with dht_network(6) as nodes:
        identity = NodeIdentity.generate()
        node = DHTNode(identity, TEST_CONFIG, state_file=state)
        await node.start(fresh_address(), 0, [nodes[0].address])
        await node.stop()
        document = json.loads(state.read_text())  # JSON, not a pickle
        assert document["format"] == "p2pcache-dht-neighbours-v1"
        assert len(document["neighbours"]) == 6
        again = DHTNode(identity, TEST_CONFIG, state_file=state)
        await again.start(fresh_address(), 0, [])  # no bootstrap peer given
        try:
            assert again.stats.routing_table_size == 6
        finally:
            await again.stop()


async def test_a_node_without_bootstrap_peers_runs_alone():
    node = await start_node()
    try:
        assert node.stats.routing_table_size == 0
        result = await node.find_providers(HASH)
        assert not result.found and result.queries == 0
    finally:
        await node.stop()


async def test_bootstrap_through_a_dead_address_gives_up_after_the_timeout():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((fresh_address(), 0))
    dead = probe.getsockname()
    probe.close()
    node = DHTNode(NodeIdentity.generate(), with_config(rpc_timeout=0.2))
    await node.start(fresh_address(), 0, [dead])
    try:
        assert node.stats.routing_table_size == 0
    finally:
        await node.stop()


async def test_a_stopped_node_refuses_work():
    node = await start_node()
    await node.stop()
    with pytest.raises(RuntimeError):
        await node.find_providers(HASH)
    await node.stop()  # stopping twice is harmless


async def start_stock_server(bootstrap: DHTNode) -> tuple[Server, tuple[str, int]]:
    stock = Server(ksize=20, alpha=3)
    host = fresh_address()
    await stock.listen(0, interface=host)
    address = stock.transport.get_extra_info("sockname")[:2]
    await stock.bootstrap([bootstrap.address])
    return stock, address


async def test_a_stock_kademlia_node_relays_records_between_p2pcache_nodes():
    announcer = await start_node()
    stock, stock_address = await start_stock_server(announcer)
    try:
        await announcer.announce([HASH], endpoint(announcer))
        key = provider_key(HASH)
        assert stock.storage.get(key) is not None  # the stock node took a plain STORE
        await announcer.stop()  # now only the stock node holds the record
        seeker = DHTNode(NodeIdentity.generate(), TEST_CONFIG)
        await seeker.start(fresh_address(), 0, [stock_address])
        try:
            result = await seeker.find_providers(HASH)
            assert [r.public_key for r in result.providers] == [announcer.identity.public_key]
        finally:
            await seeker.stop()
    finally:
        stock.stop()


async def test_a_stock_kademlia_lookup_reads_p2pcache_values():
    async with dht_network(5) as nodes:
        for node in nodes[:3]:
            await node.announce([HASH], endpoint(node))
        stock, _ = await start_stock_server(nodes[4])
        try:
            key = provider_key(HASH)
            target = Node(key)
            nearest = stock.protocol.router.find_neighbors(target)
            spider = ValueSpiderCrawl(stock.protocol, target, nearest, stock.ksize, stock.alpha)
            value = await spider.find()
            assert isinstance(value, bytes)
            decoded = decode_value(key, value, nodes[0].clock())
            assert not decoded.rejected and len(decoded.records) >= 1
        finally:
            stock.stop()


async def test_the_maintenance_task_re_announces_by_itself():
    clock = FakeClock()
    config = with_config(maintenance_interval=0.02)
    async with dht_network(5, config, clock=clock) as nodes:
        await nodes[0].announce([HASH], endpoint(nodes[0]), ttl=100)
        key = provider_key(HASH)
        first = nodes[3].storage.records(key)[0].record.issued
        clock.advance(50)
        for _ in range(100):
            if nodes[3].storage.records(key)[0].record.issued != first:
                break
            await asyncio.sleep(0.01)
        assert nodes[3].storage.records(key)[0].record.issued == first + 50
