"""Attacks on the DHT, one test each: none gets anything accepted or stops a lookup."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Callable

import nacl.signing
import umsgpack
from kademlia.network import Server
from kademlia.node import Node

from p2pcache.net.dht import DHTNode
from p2pcache.net.msgpack_codec import pack
from p2pcache.net.provider_record import (
    SIGNATURE_DOMAIN,
    ProviderRecord,
    encode_value,
    provider_key,
)
from tests.net.dht_network import RawPeer, dht_network, fresh_address, open_raw_peer

HASH = "0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z"
OTHER = "1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"
KEY = provider_key(HASH)
ATTACKER = nacl.signing.SigningKey(hashlib.sha256(b"attacker").digest())


def endpoint(node: DHTNode) -> str:
    return f"http://{node.address[0]}:8081"


def store_datagram(key: bytes, value: bytes, sender: bytes = b"a" * 20) -> bytes:
    return b"\x00" + os.urandom(20) + umsgpack.packb(["store", [sender, key, value]])


async def store_raw(node: DHTNode, key: bytes, value: bytes, wait: float = 1.0) -> object:
    """STORE from a raw socket; returns the node's answer (or None)."""
    peer, _ = await open_raw_peer()
    try:
        peer.send(store_datagram(key, value), node.address)
        reply = await peer.reply(timeout=wait)
        return None if reply is None else umsgpack.unpackb(reply[0][21:])
    finally:
        peer.close()


def victims_record(victim: DHTNode, key: bytes, issued: int, ttl: int) -> ProviderRecord:
    return ProviderRecord(victim.identity.public_key, "http://evil.example:1", issued, issued + ttl)


async def assert_only_honest_providers(nodes: list[DHTNode], honest: set[bytes]) -> None:
    for seeker in nodes[-3:]:
        result = await seeker.find_providers(HASH)
        assert {r.public_key for r in result.providers} == honest
        assert all(r.endpoint != "http://evil.example:1" for r in result.providers)


async def test_forged_record_is_refused():
    async with dht_network(8) as nodes:
        honest = nodes[0]
        await honest.announce([HASH], endpoint(honest))
        now = int(time.time())
        forged = victims_record(honest, KEY, now, 600)
        body = pack([1, forged.public_key, forged.issued, forged.expires, forged.endpoint])
        signature = ATTACKER.sign(SIGNATURE_DOMAIN + KEY + body).signature  # not honest's key
        for target in nodes[1:5]:
            assert await store_raw(target, KEY, encode_value_raw(body, signature)) is False
            assert target.stats.records_rejected["bad_signature"] == 1
        await assert_only_honest_providers(nodes, {honest.identity.public_key})


def encode_value_raw(body: bytes, signature: bytes) -> bytes:
    return b"\x91" + pack([body, signature])


async def test_record_replayed_under_another_key_is_refused():
    async with dht_network(8) as nodes:
        honest = nodes[0]
        await honest.announce([OTHER], endpoint(honest))
        captured = nodes[3].storage.records(provider_key(OTHER))[0]
        assert await store_raw(nodes[3], KEY, encode_value([captured])) is False
        assert not (await nodes[6].find_providers(HASH)).found


async def test_expired_record_is_refused():
    async with dht_network(6) as nodes:
        now = int(time.time())
        signer = ATTACKER
        stale = ProviderRecord(bytes(signer.verify_key), "http://old:1", now - 7200, now - 3600)
        value = b"\x91" + pack(
            [pack([1, stale.public_key, stale.issued, stale.expires, stale.endpoint]),
             signer.sign(SIGNATURE_DOMAIN + KEY + pack(
                 [1, stale.public_key, stale.issued, stale.expires, stale.endpoint])).signature]
        )  # fmt: skip
        assert await store_raw(nodes[2], KEY, value) is False
        assert nodes[2].stats.records_rejected == {"expired": 1}


async def test_record_living_more_than_24_hours_is_refused():
    async with dht_network(6) as nodes:
        now = int(time.time())
        fields = [1, bytes(ATTACKER.verify_key), now, now + 86400 * 365, "http://forever:1"]
        body = pack(fields)
        value = encode_value_raw(body, ATTACKER.sign(SIGNATURE_DOMAIN + KEY + body).signature)
        assert await store_raw(nodes[2], KEY, value) is False
        assert nodes[2].stats.records_rejected == {"ttl_too_long": 1}


async def test_oversized_value_via_raw_datagram_is_dropped():
    async with dht_network(6) as nodes:
        target = nodes[2]
        assert await store_raw(target, KEY, b"\x00" * 60_000, wait=0.2) is None  # 60 kB datagram
        assert target.stats.datagrams_dropped["oversize"] == 1
        assert await store_raw(target, KEY, b"\x00" * 8_100) is False  # fits, value too big
        assert target.stats.records_rejected["oversize"] == 1
        assert target.storage.key_count == 0
        await nodes[0].announce([HASH], endpoint(nodes[0]))
        result = await nodes[5].find_providers(HASH)  # lookups of that key still work
        assert [r.public_key for r in result.providers] == [nodes[0].identity.public_key]


async def test_garbage_datagrams_leave_the_node_healthy():
    async with dht_network(8) as nodes:
        target = nodes[3]
        peer, _ = await open_raw_peer()
        rng = random.Random(11)
        try:
            for i in range(2000):
                size = rng.choice((1, 21, 22, 40, 200, 1500))
                head = bytes([rng.choice((0, 1, 2, 255))]) if rng.random() < 0.9 else b""
                peer.send(head + bytes(rng.randrange(256) for _ in range(size)), target.address)
                if i % 100 == 99:
                    await asyncio.sleep(0.01)
            nested = b"\x00" + os.urandom(20) + b"\x91" * 8000 + b"\x00"
            peer.send(nested, target.address)
        finally:
            peer.close()
        await asyncio.sleep(0.05)
        assert target.stats.datagrams_dropped.total() >= 1900
        await nodes[0].announce([HASH], endpoint(nodes[0]))
        assert (await target.find_providers(HASH)).found
        assert (await nodes[7].find_providers(HASH)).found


class RoguePeer:
    """A raw socket that joins the victim's routing table under a chosen id and answers every
    FIND_NODE / FIND_VALUE with what `answer` makes of the request."""

    def __init__(self, peer: RawPeer, answer: Callable[[str], object]) -> None:
        self.peer = peer
        self.answer = answer
        self.asked = 0
        self.task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        while True:
            data, addr = await self.peer.received.get()
            if data[:1] != b"\x00":
                continue
            name, _ = umsgpack.unpackb(data[21:])
            if name in ("find_node", "find_value"):
                self.asked += 1
            reply = self.answer(name)
            if reply is not None:
                self.peer.send(b"\x01" + data[1:21] + umsgpack.packb(reply), addr)

    async def join(self, victim: DHTNode, node_id: bytes) -> None:
        self.peer.send(
            b"\x00" + os.urandom(20) + umsgpack.packb(["ping", [node_id]]), victim.address
        )
        await asyncio.sleep(0.05)
        assert any(n.id == node_id for n in victim.protocol.router.contacts())

    def close(self) -> None:
        self.task.cancel()
        self.peer.close()


def near(key: bytes, distance: int) -> bytes:
    return (int.from_bytes(key, "big") ^ distance).to_bytes(20, "big")


async def test_malformed_contact_lists_in_responses_do_not_break_a_lookup():
    malformed = [
        [1, 2, 3],
        [[b"x" * 20, "192.0.2.1"]],
        [[b"x" * 19, "192.0.2.1", 1]],
        [[b"x" * 20, ["nested"], 1]],
        [[b"x" * 20, "192.0.2.1", 2**70]],
        [[None, None, None]] * 30,
        {"value": [1, 2, 3]},
        {"value": b"\x00" * 10, "extra": 1},
        "a string",
        None,
    ]
    async with dht_network(10) as nodes:
        await nodes[0].announce([HASH], endpoint(nodes[0]))
        victim = nodes[9]
        for index, reply in enumerate(malformed):
            peer, _ = await open_raw_peer()
            rogue = RoguePeer(
                peer, lambda name, reply=reply: reply if name != "ping" else b"r" * 20
            )
            try:
                await rogue.join(victim, near(KEY, index + 1))
                result = await victim.find_providers(HASH)
                assert rogue.asked == 1
                assert [r.public_key for r in result.providers] == [nodes[0].identity.public_key]
            finally:
                rogue.close()


async def test_a_stock_node_calling_set_digest_cannot_overwrite_records():
    async with dht_network(8) as nodes:
        honest = {n.identity.public_key for n in nodes[:3]}
        for node in nodes[:3]:
            await node.announce([HASH], endpoint(node))
        stock = Server(ksize=20, alpha=3)
        await stock.listen(0, interface=fresh_address())
        try:
            await stock.bootstrap([nodes[4].address])
            await stock.set_digest(KEY, b"i overwrite you")
            await stock.set_digest(KEY, 12345)
            await asyncio.sleep(0.05)
            assert sum(n.stats.records_rejected["malformed"] for n in nodes) >= 8
            await assert_only_honest_providers(nodes, honest)
        finally:
            stock.stop()


async def test_a_flood_of_fake_ids_from_one_socket_neither_fills_the_table_nor_captures_a_key():
    async with dht_network(12) as nodes:
        await nodes[0].announce([HASH], endpoint(nodes[0]))
        victim = nodes[11]
        before = victim.stats.routing_table_size
        peer, _ = await open_raw_peer()
        try:
            rng = random.Random(5)
            fake_ids = [rng.randbytes(20) for _ in range(300)]
            fake_ids += [near(KEY, d) for d in range(1, 21)]  # the 20 ids closest to KEY
            for i, fake in enumerate(fake_ids):
                peer.send(
                    b"\x00" + os.urandom(20) + umsgpack.packb(["ping", [fake]]), victim.address
                )
                if i % 40 == 39:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            attacker_ip = peer.transport.get_extra_info("sockname")[0]
            contacts = victim.protocol.router.contacts()
            assert victim.stats.routing_table_size <= before + 2
            closest = victim.protocol.router.find_neighbors(Node(KEY), 20)
            assert sum(n.ip == attacker_ip for n in closest) <= 2
            assert sum(n.ip == attacker_ip for n in contacts) <= 2
            result = await victim.find_providers(HASH)
            assert [r.public_key for r in result.providers] == [nodes[0].identity.public_key]
        finally:
            peer.close()


async def test_a_reply_with_hundreds_of_fake_contacts_does_not_stall_a_lookup():
    rng = random.Random(8)

    def fake_contacts(name: str) -> object:
        if name == "ping":
            return b"r" * 20
        return [  # 500 ids right next to the key, at addresses where nobody listens
            [near(KEY, rng.randrange(1, 1 << 20)), f"127.{rng.randrange(1, 250)}.{i % 250}.7", 9]
            for i in range(500)
        ]

    async with dht_network(12) as nodes:
        for node in nodes[:2]:
            await node.announce([HASH], endpoint(node))
        victim = nodes[11]
        timeout = victim.config.rpc_timeout
        peer, _ = await open_raw_peer()
        rogue = RoguePeer(peer, fake_contacts)
        try:
            await rogue.join(victim, near(KEY, 1))
            started = time.monotonic()
            result = await victim.find_providers(HASH)
            elapsed = time.monotonic() - started
            assert rogue.asked == 1
            assert {r.public_key for r in result.providers} == {
                n.identity.public_key for n in nodes[:2]
            }
            assert elapsed < 2 * timeout
            assert result.queries <= 20 + 20  # the reply counted for at most k contacts
        finally:
            rogue.close()
