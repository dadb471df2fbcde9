"""The collect-all lookup: every valid record from the closest nodes, bounded in time."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import replace

import nacl.signing
import umsgpack
from kademlia.node import Node

from p2pcache.net.dht_crawl import CrawlConfig, Lookup
from p2pcache.net.provider_record import (
    OutputsRecord,
    ProviderRecord,
    RecordKind,
    encode_value,
    make_outputs,
    provider_key,
    sign_record,
)
from tests.net.dht_network import dht_network, open_raw_peer

HASH = "0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z"
KEY = provider_key(HASH)


def record(i: int, key: bytes = KEY, ttl: int = 600):
    signer = nacl.signing.SigningKey(hashlib.sha256(b"crawl %d" % i).digest())
    now = int(time.time())
    body = ProviderRecord(bytes(signer.verify_key), f"http://192.0.2.{i}:8081", now, now + ttl)
    return sign_record(key, body, signer)


def crawl_config(node, **changes) -> CrawlConfig:
    return replace(node.config.crawl_config(), **changes)


async def test_records_are_collected_from_every_holder_not_just_the_first():
    async with dht_network(10) as nodes:
        for i, holder in enumerate(nodes[1:8]):
            holder.storage.merge(KEY, encode_value([record(i)]))  # one provider each
        seeker = nodes[0]
        result = await Lookup(
            seeker.protocol, KEY, crawl_config(seeker), kind=RecordKind.PROVIDER
        ).run()
        assert len(result.records) == 7
        assert result.complete and result.rounds_to_first >= 1


async def test_a_lookup_stops_once_it_has_enough_providers():
    async with dht_network(16) as nodes:
        for i, holder in enumerate(nodes[1:]):
            holder.storage.merge(KEY, encode_value([record(i)]))
        seeker = nodes[0]
        config = crawl_config(seeker, enough_records=3, alpha=1)
        result = await Lookup(seeker.protocol, KEY, config, kind=RecordKind.PROVIDER).run()
        assert 3 <= len(result.records) < 15
        assert result.queries < 15


async def test_invalid_and_other_kind_records_are_left_out_and_counted():
    async with dht_network(6) as nodes:
        outputs = OutputsRecord(
            record(9).record.public_key, "http://x", int(time.time()), int(time.time()) + 60,
            make_outputs({"out": f"/gnu/store/{HASH}-x"}),
        )  # fmt: skip
        signer = nacl.signing.SigningKey(hashlib.sha256(b"crawl 9").digest())
        wrong_kind = sign_record(KEY, outputs, signer)
        replayed = record(3, key=provider_key("1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"))
        nodes[1].storage.merge(KEY, encode_value([record(1)]))
        nodes[2].storage.merge(KEY, encode_value([wrong_kind]))
        nodes[3].storage._keep(replayed, None)  # a holder that kept a replayed record
        nodes[3].storage._keys[KEY] = nodes[3].storage._keys.pop(replayed.key)
        seeker = nodes[0]
        result = await Lookup(
            seeker.protocol, KEY, crawl_config(seeker), kind=RecordKind.PROVIDER
        ).run()
        assert [r.record.endpoint for r in result.records] == ["http://192.0.2.1:8081"]
        assert result.rejected["wrong_kind"] == 1
        assert result.rejected["bad_signature"] == 1


async def test_local_records_count_as_round_zero():
    async with dht_network(4) as nodes:
        seeker = nodes[0]
        local = [record(1)]
        result = await Lookup(
            seeker.protocol,
            KEY,
            crawl_config(seeker),
            kind=RecordKind.PROVIDER,
            local_records=local,
        ).run()
        assert result.rounds_to_first == 0 and len(result.records) == 1


async def test_a_node_lookup_finds_the_k_closest_live_nodes():
    async with dht_network(30) as nodes:
        seeker = nodes[0]
        config = crawl_config(seeker, ksize=8)
        target = Node(KEY)
        result = await Lookup(seeker.protocol, KEY, config).run()
        others = sorted(nodes[1:], key=lambda n: n.node.long_id ^ target.long_id)
        assert [n.id for n in result.closest] == [n.node_id for n in others[:8]]
        assert result.rounds >= 1 and result.complete


async def test_dead_nodes_delay_a_lookup_by_less_than_the_rpc_timeout():
    async with dht_network(24) as nodes:
        for i, holder in enumerate(nodes[19:]):  # 5 providers: fewer than "enough"
            holder.storage.merge(KEY, encode_value([record(i)]))
        for dead in nodes[1:10]:  # still in everyone's routing table
            await dead.stop()
        seeker = nodes[0]
        timeout = seeker.config.rpc_timeout
        result = await Lookup(
            seeker.protocol, KEY, crawl_config(seeker), kind=RecordKind.PROVIDER
        ).run()
        assert result.found  # (holders answer with records, not contacts: some may stay unseen)
        assert result.stalled >= 1
        assert result.seconds < timeout  # stalled queries do not hold the end
        assert result.complete


async def test_a_slow_holder_of_the_only_record_is_waited_for_not_presumed_dead():
    """A busy provider may answer after the stall time: while nothing is found, its answer
    (or its RPC timeout) is awaited, so a slow reply is not turned into "nobody has it"."""
    async with dht_network(2) as (seeker, fast):
        slow, slow_address = await open_raw_peer()
        delay = 0.15  # past the stall time (50 ms on loopback), within the 0.3 s RPC timeout

        async def answer_late() -> None:
            request, sender = await slow.received.get()
            await asyncio.sleep(delay)
            reply = umsgpack.packb({"value": encode_value([record(1)])})
            slow.send(b"\x01" + request[1:21] + reply, sender)

        answering = asyncio.create_task(answer_late())
        try:
            seeds = [Node(b"s" * 20, *slow_address), Node(fast.node_id, *fast.address)]
            result = await Lookup(
                seeker.protocol, KEY, crawl_config(seeker), kind=RecordKind.PROVIDER, seeds=seeds
            ).run()
            assert result.stalled == 1
            assert result.found and result.complete
            assert result.seconds >= delay
        finally:
            answering.cancel()
            slow.close()


async def test_a_lookup_of_only_silent_peers_ends_at_its_time_bound():
    async with dht_network(1) as (seeker,):
        silent = [await open_raw_peer() for _ in range(5)]
        seeds = [Node(bytes([i]) * 20, *address) for i, (_, address) in enumerate(silent)]
        config = crawl_config(seeker, max_seconds=0.2)
        started = time.monotonic()
        result = await Lookup(
            seeker.protocol, KEY, config, kind=RecordKind.PROVIDER, seeds=seeds
        ).run()
        assert 0.2 <= time.monotonic() - started < 0.35
        assert not result.complete and not result.found
        for peer, _ in silent:
            peer.close()


async def test_the_number_of_queries_is_bounded():
    async with dht_network(25) as nodes:
        seeker = nodes[0]
        config = crawl_config(seeker, max_queries=5)
        result = await Lookup(seeker.protocol, KEY, config, kind=RecordKind.PROVIDER).run()
        assert result.queries == 5 and not result.complete
