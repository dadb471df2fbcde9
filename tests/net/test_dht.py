"""DHTNode on real UDP sockets: announce, find, expire, re-announce, state, stock interop."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest
import umsgpack
from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from p2pcache.net.dht import RECEIVE_BUFFER_BYTES, DHTConfig, DHTNode, set_receive_buffer
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.provider_record import decode_value, provider_key
from tests.net.dht_network import (
    TEST_CONFIG,
    FakeClock,
    dht_network,
    fresh_address,
    open_raw_peer,
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
        assert not result.complete  # it asked nobody: it cannot say nobody has the item
        assert node.stats.lookups[("providers", "incomplete")] == 1
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


def find_value_datagram(sender: bytes, key: bytes) -> bytes:
    return b"\x00" + os.urandom(20) + umsgpack.packb(["find_value", [sender, key]])


def kernel_receive_buffer_cap() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


async def test_the_socket_asks_the_kernel_for_a_large_receive_buffer():
    node = DHTNode(NodeIdentity.generate(), DHTConfig())
    await node.start(fresh_address(), 0)
    try:
        sock = node._transport.get_extra_info("socket")
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # Linux doubles what it grants (bookkeeping overhead) and caps it at rmem_max.
        assert granted >= 2 * min(RECEIVE_BUFFER_BYTES, kernel_receive_buffer_cap())
        assert granted > 2 * 212_992  # more than the usual default, on any usual kernel
    finally:
        await node.stop()


async def test_one_peers_guix_batch_of_lookups_is_answered_whole_with_the_shipped_limits():
    """On a network under k nodes every lookup asks every node: one Guix batch of 1000
    narinfo misses at a peer sends this node 1000 FIND_VALUEs at once. All are answered."""
    node = DHTNode(NodeIdentity.generate(), DHTConfig())  # the shipped settings
    await node.start(fresh_address(), 0)
    asker, _ = await open_raw_peer()
    set_receive_buffer(asker.transport, RECEIVE_BUFFER_BYTES)
    # All at once, unless the kernel would not give the node a buffer that holds them.
    paced = kernel_receive_buffer_cap() < RECEIVE_BUFFER_BYTES
    try:
        sender = os.urandom(20)
        for n in range(1000):
            asker.send(find_value_datagram(sender, os.urandom(20)), node.address)
            if paced and n % 100 == 99:
                await asyncio.sleep(0.005)
        answered = 0
        while await asker.reply(timeout=1.0) is not None:
            answered += 1
        assert node.stats.datagrams_dropped["rate_limited"] == 0
        assert answered == 1000
    finally:
        asker.close()
        await node.stop()


async def test_the_shipped_limits_still_stop_a_flood_from_one_address():
    config = DHTConfig()
    node = DHTNode(NodeIdentity.generate(), config)
    await node.start(fresh_address(), 0)
    flooder, _ = await open_raw_peer()
    try:
        sender = os.urandom(20)
        started = time.monotonic()
        for n in range(6000):
            flooder.send(find_value_datagram(sender, os.urandom(20)), node.address)
            if n % 100 == 99:
                await asyncio.sleep(0.002)  # within the socket buffers: only the limit drops
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.2)
        handled = node.stats.rpcs_received["find_value"]
        dropped = node.stats.datagrams_dropped["rate_limited"]
        assert handled + dropped == 6000
        allowed = config.request_burst_per_ip + config.requests_per_second_per_ip * (elapsed + 0.2)
        assert config.request_burst_per_ip <= handled <= allowed
        assert dropped >= 6000 - allowed
    finally:
        flooder.close()
        await node.stop()


async def restart(node: DHTNode, address: tuple[str, int]) -> DHTNode:
    """The same node (identity, address) started again after a stop, knowing nobody."""
    again = DHTNode(node.identity, node.config)
    await again.start(*address)
    return again


async def test_a_burst_of_timeouts_keeps_the_contacts_and_is_not_taken_for_absence():
    async with dht_network(4) as nodes:
        asker, peers = nodes[0], nodes[1:]
        assert asker.stats.routing_table_size == 3
        addresses = [p.address for p in peers]
        for peer in peers:
            await peer.stop()
        # A batch of lookups while every peer is silent (or their replies were dropped).
        results = await asyncio.gather(*(asker.find_providers(f"{n:032d}") for n in range(50)))
        assert all(not r.found and not r.complete and r.unanswered for r in results)
        assert asker.stats.lookups[("providers", "incomplete")] == 50
        assert asker.stats.lookups[("providers", "not_found")] == 0
        # The contacts are kept (stale for now): when the peers are back, so is the node.
        assert asker.stats.routing_table_size == 3
        assert asker.stats.contacts_evicted == 0
        back = [await restart(p, a) for p, a in zip(peers, addresses, strict=True)]
        try:
            assert [b.address for b in back] == addresses
            await back[0].announce([HASH], endpoint(back[0]))
            result = await asker.find_providers(HASH)
            assert result.found and result.complete
            assert asker.protocol.live_contacts() >= 1
        finally:
            for node in back:
                await node.stop()


async def test_a_node_that_lost_every_contact_joins_again_through_its_bootstrap_peer():
    # Contacts evicted at their first failure, so the table empties at once.
    config = with_config(stale_after_failures=1, stale_seconds=0.0, rebootstrap_interval=0.5)
    async with dht_network(3) as nodes:
        asker = await start_node([nodes[1]], config)
        try:
            assert asker.stats.routing_table_size == 3
            bootstrap_address = nodes[1].address
            for node in nodes:
                await node.stop()
            result = await asker.find_providers(HASH)
            assert not result.complete
            assert asker.stats.routing_table_size == 0
            assert asker.stats.contacts_evicted == 3
            # The bootstrap peer is down too: the re-join fails, the lookup asks nobody.
            result = await asker.find_providers(HASH)
            assert not result.complete and result.queries == 0
            assert asker.stats.rebootstraps == {"failed": 1}
            bootstrap = await restart(nodes[1], bootstrap_address)
            try:
                await bootstrap.announce([HASH], endpoint(bootstrap))
                # Within the re-join interval, no new attempt.
                assert not (await asker.find_providers(HASH)).found
                await asyncio.sleep(0.5)
                result = await asker.find_providers(HASH)
                assert result.found and result.complete
                assert asker.stats.rebootstraps == {"failed": 1, "joined": 1}
                assert asker.stats.routing_table_size == 1
            finally:
                await bootstrap.stop()
        finally:
            await asker.stop()
