"""DHTProtocol over real UDP sockets: the RPCs, their validation, and the limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import replace

import nacl.signing
import pytest
import umsgpack
from kademlia.node import Node

from p2pcache.net.dht_protocol import (
    MAX_BATCH_ENTRIES,
    MAX_REQUEST_SIZE,
    DHTProtocol,
    ProtocolConfig,
    pack_store_batches,
    sanitize_contacts,
)
from p2pcache.net.dht_routing import ContactLimits
from p2pcache.net.dht_stats import DHTStats
from p2pcache.net.dht_storage import ProviderStorage
from p2pcache.net.provider_record import (
    ProviderRecord,
    decode_value,
    encode_value,
    provider_key,
    sign_record,
)
from tests.net.dht_network import fresh_address, open_raw_peer

KEY = provider_key("0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z")
CONFIG = ProtocolConfig(rpc_timeout=0.3, requests_per_second_per_ip=1000, request_burst_per_ip=2000)


def valid_value(i: int = 0, key: bytes = KEY) -> bytes:
    signer = nacl.signing.SigningKey(hashlib.sha256(b"protocol %d" % i).digest())
    now = int(time.time())
    record = ProviderRecord(bytes(signer.verify_key), f"http://192.0.2.{i}:8081", now, now + 600)
    return encode_value([sign_record(key, record, signer)])


async def endpoint(node_id: bytes | None = None, config: ProtocolConfig = CONFIG) -> DHTProtocol:
    loop = asyncio.get_running_loop()
    node = Node(node_id or os.urandom(20))
    stats = DHTStats()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: DHTProtocol(node, ProviderStorage(stats=stats), config, stats),
        local_addr=(fresh_address(), 0),
    )
    return protocol


def address(protocol: DHTProtocol) -> tuple[str, int]:
    return protocol.transport.get_extra_info("sockname")[:2]


def as_node(protocol: DHTProtocol) -> Node:
    return Node(protocol.source_node.id, *address(protocol))


def request(name: str, *args: object, msg_id: bytes = b"m" * 20) -> bytes:
    return b"\x00" + msg_id + umsgpack.packb([name, list(args)])


@pytest.fixture
async def pair():
    a, b = await endpoint(), await endpoint()
    yield a, b
    a.transport.close()
    b.transport.close()


async def test_ping_answers_with_the_node_id_and_learns_the_caller(pair):
    a, b = pair
    answered, node_id = await a.ping(address(b), a.source_node.id)
    assert answered and node_id == b.source_node.id
    assert [n.id for n in b.router.contacts()] == [a.source_node.id]


async def test_store_says_whether_a_record_was_accepted(pair):
    a, b = pair
    assert await a.call_store(as_node(b), KEY, valid_value()) == (True, True)
    assert await a.call_store(as_node(b), KEY, b"i overwrite you") == (True, False)
    assert await a.call_store(as_node(b), KEY, "a string") == (True, False)
    assert await a.call_store(as_node(b), KEY, b"v" * 8001) == (True, False)
    assert b.stats.records_rejected == {"malformed": 2, "oversize": 1}
    assert len(b.storage.records(KEY)) == 1
    assert b.storage.source_count(address(a)[0]) == 1


async def test_find_value_returns_records_and_find_node_contacts(pair):
    a, b = pair
    await a.call_store(as_node(b), KEY, valid_value())
    found = await a.query(as_node(b), KEY, want_value=True)
    assert found.answered and len(decode_value(KEY, found.value, time.time()).records) == 1
    other = provider_key("1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw")
    missing = await a.query(as_node(b), other, want_value=True)
    assert missing.answered and missing.value is None and missing.contacts == ()  # only `a`
    nodes = await a.query(as_node(b), other, want_value=False)
    assert nodes.answered and nodes.value is None


async def test_store_many_stores_each_entry(pair):
    a, b = pair
    keys = [provider_key(f"{i:032d}") for i in range(10)]
    entries = [(k, valid_value(i, k)) for i, k in enumerate(keys)] + [(KEY, b"junk")]
    assert await a.call_store_many(as_node(b), entries) == [True] * 10 + [False]
    assert b.storage.key_count == 10


def test_store_batches_fit_a_request():
    entries = [(os.urandom(20), os.urandom(500)) for _ in range(100)]
    batches = pack_store_batches(entries)
    assert [e for batch in batches for e in batch] == entries
    for batch in batches:
        size = len(umsgpack.packb(["store_many", [b"x" * 20, [list(e) for e in batch]]]))
        assert size <= MAX_REQUEST_SIZE and len(batch) <= MAX_BATCH_ENTRIES


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"\x00" + b"m" * 20 + b"\x00" * 9000, "oversize"),
        (b"\x00" + b"m" * 5, "short"),
        (b"\x00" + b"m" * 20 + b"\xc1\xc1", "malformed"),
        (b"\x00" + b"m" * 20 + umsgpack.packb({"ping": 1}), "malformed"),
        (b"\x07" + b"m" * 20 + umsgpack.packb(["ping", [b"x" * 20]]), "unknown_type"),
        (request("ping", b"x" * 19), "bad_arguments"),
        (request("ping", 12345), "bad_arguments"),
        (request("store", b"x" * 20, b"k" * 64, b"v"), "bad_arguments"),
        (request("find_node", b"x" * 20), "bad_arguments"),
        (request("store_many", b"x" * 20, [[b"k" * 20]]), "bad_arguments"),
        (request("exec", b"x" * 20), "unknown_rpc"),
        (b"\x01" + b"n" * 20 + umsgpack.packb(b"x" * 20), "unsolicited"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_bad_datagrams_are_dropped_counted_and_unanswered(datagram, reason):
    node = await endpoint()
    peer, _ = await open_raw_peer()
    try:
        peer.send(datagram, address(node))
        for _ in range(100):  # handled synchronously: counted when it is read
            if node.stats.datagrams_received:
                break
            await asyncio.sleep(0.01)
        assert await peer.reply(timeout=0.05) is None
        assert node.stats.datagrams_dropped == {reason: 1}
        peer.send(request("ping", b"p" * 20), address(node))  # and it still answers
        assert await peer.reply() is not None
    finally:
        peer.close()
        node.transport.close()


async def test_requests_are_rate_limited_per_source_ip():
    config = ProtocolConfig(rpc_timeout=0.3, requests_per_second_per_ip=20, request_burst_per_ip=40)
    node = await endpoint(config=config)
    flooder, _ = await open_raw_peer()
    other, _ = await open_raw_peer()
    try:
        for i in range(300):
            flooder.send(request("ping", os.urandom(20), msg_id=os.urandom(20)), address(node))
            if i % 50 == 49:
                await asyncio.sleep(0.005)  # within the socket's receive buffer
        await asyncio.sleep(0.2)
        answers = flooder.received.qsize()
        assert 40 <= answers < 60
        assert node.stats.datagrams_dropped["rate_limited"] == 300 - answers
        other.send(request("ping", b"p" * 20), address(node))
        assert await other.reply() is not None  # another address is not affected
        flood_ip = flooder.transport.get_extra_info("sockname")[0]
        assert node.router.census.per_ip[flood_ip] == 2  # 300 ids, 2 contacts
    finally:
        flooder.close()
        other.close()
        node.transport.close()


async def test_a_reply_from_another_address_is_ignored():
    node = await endpoint()
    asked, asked_address = await open_raw_peer()
    impostor, _ = await open_raw_peer()
    try:
        query = asyncio.ensure_future(
            node.query(Node(b"q" * 20, *asked_address), KEY, want_value=False)
        )
        datagram, _ = await asked.reply()
        msg_id = datagram[1:21]
        impostor.send(
            b"\x01" + msg_id + umsgpack.packb([[b"f" * 20, "192.0.2.9", 1]]), address(node)
        )
        await asyncio.sleep(0.05)
        assert not query.done()
        assert node.stats.datagrams_dropped == {"wrong_source": 1}
        asked.send(b"\x01" + msg_id + umsgpack.packb([]), address(node))
        found = await query
        assert found.answered and found.contacts == ()
    finally:
        asked.close()
        impostor.close()
        node.transport.close()


async def test_a_silent_peer_costs_the_configured_timeout_and_stays_until_stale():
    config = replace(CONFIG, stale_seconds=0.5)
    node = await endpoint(config=config)
    silent, silent_address = await open_raw_peer()
    try:
        peer = Node(b"s" * 20, *silent_address)
        node.router.add_contact(peer)
        started = time.monotonic()
        found = await node.query(peer, KEY, want_value=True)
        elapsed = time.monotonic() - started
        assert not found.answered
        assert 0.25 <= elapsed < 0.6
        assert node.stats.rpc_timeouts == 1
        # One silence (a dropped datagram, a busy peer) is not a dead peer (paper §4.1).
        assert node.router.size() == 1 and node.live_contacts() == 1
        # Nor is a burst of them at once: stale, but kept while nothing replaces it.
        await asyncio.gather(*(node.query(peer, KEY, want_value=True) for _ in range(6)))
        assert node.router.size() == 1 and node.live_contacts() == 0
        assert node.stats.contacts_evicted == 0
        # Still silent `stale_seconds` after it started failing: removed.
        await asyncio.sleep(0.5)
        await node.query(peer, KEY, want_value=True)
        assert node.router.size() == 0 and node.stats.contacts_evicted == 1
    finally:
        silent.close()
        node.transport.close()


async def test_an_answer_makes_a_failing_contact_live_again():
    node = await endpoint()
    peer_node = await endpoint()
    try:
        peer = Node(peer_node.source_node.id, *address(peer_node))
        node.router.add_contact(peer)
        peer_node.transport.pause_reading()  # silent for a while
        await asyncio.gather(*(node.query(peer, KEY, want_value=True) for _ in range(5)))
        assert node.live_contacts() == 0
        peer_node.transport.resume_reading()
        found = await node.query(peer, KEY, want_value=True)
        assert found.answered
        assert node.live_contacts() == 1 and node.router.size() == 1
    finally:
        peer_node.transport.close()
        node.transport.close()


async def test_a_stale_contact_gives_its_place_to_a_waiting_replacement():
    # k = 1 and ids far from our own: the second contact waits in the bucket's replacement
    # cache (paper §2.2), and takes the place of the first once it is stale (paper §4.1).
    node = await endpoint(bytes(20), replace(CONFIG, ksize=1))
    silent, silent_address = await open_raw_peer()
    waiting, waiting_address = await open_raw_peer()
    try:
        first = Node(b"\xff" * 19 + b"\x01", *silent_address)
        second = Node(b"\xff" * 19 + b"\x02", *waiting_address)
        assert node.router.add_contact(first)
        assert not node.router.add_contact(second)  # cached as a replacement; `first` pinged
        await asyncio.gather(*(node.query(first, KEY, want_value=True) for _ in range(3)))
        assert node.stats.rpc_timeouts == 4  # the ping and three queries
        assert [c.id for c in node.router.contacts()] == [first.id]
        await node.query(first, KEY, want_value=True)  # the fifth in a row: stale
        assert [c.id for c in node.router.contacts()] == [second.id]
        assert node.stats.contacts_evicted == 1
    finally:
        silent.close()
        waiting.close()
        node.transport.close()


def test_contacts_are_sanitized():
    own = b"o" * 20
    good = [b"g" * 20, "192.0.2.1", 8083]
    raw = [
        good,
        [b"short", "192.0.2.2", 8083],
        [b"h" * 20, "not an address", 8083],
        [b"i" * 20, "224.0.0.1", 8083],
        [b"j" * 20, "0.0.0.0", 8083],
        [b"k" * 20, "192.0.2.3", 0],
        [b"l" * 20, "192.0.2.3", 70000],
        [b"m" * 20, "192.0.2.3", "8083"],
        [own, "192.0.2.4", 8083],
        good,
        "garbage",
        [b"n" * 20, "2001:db8::1", 8083],
        [b"p" * 20, "010.1.1.1", 8083],
    ]
    contacts = sanitize_contacts(raw, 20, own)
    assert [(n.id[:1], n.ip, n.port) for n in contacts] == [
        (b"g", "192.0.2.1", 8083),
        (b"n", "2001:db8::1", 8083),
    ]


def test_only_the_first_k_contacts_of_a_reply_are_read():
    raw = [[os.urandom(20), f"10.0.{i // 250}.{i % 250 + 1}", 8083] for i in range(500)]
    assert len(sanitize_contacts(raw, 20, b"o" * 20)) == 20


async def test_a_garbage_reply_counts_as_no_reply():
    node = await endpoint()
    liar, liar_address = await open_raw_peer()
    try:
        peer = Node(b"l" * 20, *liar_address)
        node.router.add_contact(peer)
        query = asyncio.ensure_future(node.query(peer, KEY, want_value=True))
        datagram, _ = await liar.reply()
        liar.send(b"\x01" + datagram[1:21] + umsgpack.packb({"value": [1, 2, 3]}), address(node))
        found = await query
        assert not found.answered
        assert node.stats.rpc_timeouts == 1  # counted against the contact, as silence is
        assert node.router.size() == 1  # which stays until stale
    finally:
        liar.close()
        node.transport.close()


async def test_no_exception_reaches_the_event_loop():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    node = await endpoint()
    peer, _ = await open_raw_peer()
    try:
        rng = __import__("random").Random(7)
        for i in range(500):
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
            peer.send(bytes([rng.choice((0, 1))]) + os.urandom(20) + body, address(node))
            if i % 50 == 49:
                await asyncio.sleep(0.01)  # within the socket's receive buffer
        peer.send(request("ping", b"p" * 20), address(node))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any(
            d[21:] == umsgpack.packb(node.source_node.id) for d, _ in list(peer.received._queue)
        ):
            await asyncio.sleep(0.02)
        assert errors == []
        assert node.stats.datagrams_received == 501
    finally:
        loop.set_exception_handler(None)
        peer.close()
        node.transport.close()


async def test_a_newcomer_close_to_a_key_is_handed_its_records():
    key_int = int.from_bytes(KEY, "big")
    # k = 1: only the one node closest to the key should hold it.
    single = ProtocolConfig(ksize=1, rpc_timeout=0.3)
    holder = await endpoint((key_int ^ (1 << 100)).to_bytes(20, "big"), single)
    far = await endpoint((key_int ^ (1 << 159)).to_bytes(20, "big"))
    newcomer = await endpoint((key_int ^ 1).to_bytes(20, "big"))
    try:
        holder.storage.merge(KEY, valid_value(1))
        holder.storage.merge(provider_key("1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"), b"")
        await far.ping(address(holder), far.source_node.id)  # far: not given the key
        assert far.storage.key_count == 0
        await newcomer.ping(address(holder), newcomer.source_node.id)
        for _ in range(50):
            if newcomer.storage.records(KEY):
                break
            await asyncio.sleep(0.01)
        assert len(newcomer.storage.records(KEY)) == 1
        assert far.storage.key_count == 0
    finally:
        for p in (holder, far, newcomer):
            p.transport.close()


async def test_contact_limits_apply_to_callers():
    node = await endpoint(config=ProtocolConfig(contact_limits=ContactLimits(max_per_ip=1)))
    a, _ = await open_raw_peer()
    b, _ = await open_raw_peer(host=a.transport.get_extra_info("sockname")[0])
    try:
        a.send(request("ping", b"a" * 20), address(node))
        b.send(request("ping", b"b" * 20), address(node))
        assert await a.reply() is not None and await b.reply() is not None
        assert node.router.size() == 1
    finally:
        a.close()
        b.close()
        node.transport.close()
