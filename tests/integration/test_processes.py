"""Five real `p2pcache serve` processes on loopback, each on its own 127.0.4X.1.

`seed` and `second` publish the same generated store (with one item of about 56 MiB); `guix`,
`fetcher` and `victim` start empty and join the DHT through `seed`. Their Guix ACL holds the
seeders' keys (and, for `victim`, a key whose holder runs a lying peer). The tests run in file
order: the provider that is killed mid-transfer is killed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.guix.signing_key import (
    GuixSecretKey,
    parse_acl,
    render_acl,
    write_key_pair,
)
from p2pcache.guix.store_db import StoreItemInfo
from p2pcache.net.dht import DHTConfig, DHTNode
from p2pcache.net.identity import NodeIdentity, parse_identity
from p2pcache.net.msgpack_codec import pack
from p2pcache.net.provider_record import (
    ProviderRecord,
    SignedRecord,
    encode_body,
    encode_value,
    provider_key,
    sign_record,
    signed_message,
)
from p2pcache.testing import TestStore, generate_test_store, remove_test_store
from p2pcache.trust.narinfo_acceptance import accept_relayed_narinfo
from tests import guix_client
from tests.integration.dht_probe import DHTProbe, request_datagram
from tests.integration.node_processes import (
    Metrics,
    NodeCluster,
    NodeProcess,
    NodeSpec,
    publish_all,
)
from tests.net.peer_servers import CorruptingPeerAPI, peer_server
from tests.seeded_cache import seed_cache

# Fifteen items, one of them an output with a 55 MiB library (57 chunks of 1 MiB): enough
# chunks that a fetch is still going when a provider dies, with batches left to move.
STORE = {"items": 30, "seed": 6, "large_items": 1, "max_file_size": 64 << 20}
LARGE_MIN = 40 << 20
ABSENT = "0" * 31 + "1"


def hash_part(info: StoreItemInfo) -> str:
    return info.path.rsplit("/", 1)[-1][:32]


@dataclass
class Network:
    store: TestStore
    seed: NodeProcess
    second: NodeProcess
    guix: NodeProcess
    fetcher: NodeProcess
    victim: NodeProcess
    liar_key: GuixSecretKey
    """A key in the victim's ACL whose holder runs a lying peer (see the lying-peer tests)."""

    @property
    def large(self) -> StoreItemInfo:
        return max(self.store.items, key=lambda i: i.nar_size or 0)

    def small_items(self) -> list[StoreItemInfo]:
        return sorted(
            (i for i in self.store.items if 1000 < (i.nar_size or 0) < (1 << 20)),
            key=lambda i: i.path,
        )


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("processes")
    store = generate_test_store(root / "store", **STORE)
    try:
        with NodeCluster(root) as cluster:
            seed = cluster.add(NodeSpec("seed", "127.0.40.1", root / "seed", store=store))
            second = cluster.add(NodeSpec("second", "127.0.41.1", root / "second", store=store))
            liar_key = write_key_pair(root / "liar-key")
            seeders = [cluster.signing_key(seed), cluster.signing_key(second)]
            acl = root / "acl"
            acl.write_bytes(render_acl(seeders))
            victim_acl = root / "victim-acl"
            victim_acl.write_bytes(render_acl([*seeders, liar_key.public]))
            publish_all([seed, second])
            cluster.start([seed])
            assert seed.dht_address is not None
            bootstrap = ["{}:{}".format(*seed.dht_address)]
            second.spec.bootstrap = bootstrap
            guix = cluster.add(NodeSpec("guix", "127.0.42.1", root / "guix", acl, bootstrap))
            # Two providers in parallel, so that both are in use when one of them dies.
            fetcher = cluster.add(
                NodeSpec("fetcher", "127.0.43.1", root / "fetcher", acl, bootstrap, 2)
            )
            victim = cluster.add(
                NodeSpec("victim", "127.0.44.1", root / "victim", victim_acl, bootstrap)
            )
            cluster.start([second, guix, fetcher, victim])
            yield Network(store, seed, second, guix, fetcher, victim, liar_key)
    finally:
        remove_test_store(root / "store")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def probe() -> AsyncIterator[DHTProbe]:
    probe = await DHTProbe.open("127.0.47.1")
    try:
        yield probe
    finally:
        probe.close()


async def wait_for_providers(
    probe: DHTProbe, holder: NodeProcess, items: list[StoreItemInfo], count: int
) -> None:
    """Announcing is paced: wait until `holder` keeps `count` provider records of each item."""
    assert holder.dht_address is not None
    deadline = time.monotonic() + 20
    for info in items:
        key = provider_key(hash_part(info))
        while len(await probe.records(holder.dht_address, key)) < count:
            assert time.monotonic() < deadline, f"{info.path} has no {count} providers in the DHT"
            await asyncio.sleep(0.1)


async def test_an_item_a_node_never_had_is_served_to_guix(network, http, probe):
    items = network.small_items()[:4]
    assert len(items) == 4
    await wait_for_providers(probe, network.seed, items, 2)
    host, port = network.guix.guix_address
    wanted = [hash_part(i) for i in items]
    replies = await guix_client.narinfos(host, port, [*wanted, ABSENT])
    assert [r.status for r in replies] == [200] * len(items) + [404]
    trusted = parse_acl((network.guix.data_dir.parent / "acl").read_bytes())
    urls = []
    for info, reply in zip(items, replies, strict=False):
        accepted = accept_relayed_narinfo(reply.body, hash_part(info), trusted, "/gnu/store")
        narinfo = parse_narinfo(reply.body)
        assert accepted.narinfo.store_path == info.path
        assert accepted.nar_size == info.nar_size
        assert [(u.compression, u.file_size) for u in narinfo.urls] == [("none", info.nar_size)]
        urls.append(narinfo.urls[0].url)
    for info, url in zip(items, urls, strict=True):
        nar = await guix_client.get(host, port, f"/{url}")
        assert nar.status == 200 and nar.complete
        assert hashlib.sha256(nar.body).digest() == info.nar_sha256
    status = await network.guix.status(http)
    assert status["cache"]["baked"] == len(items)
    metrics = await network.guix.metrics(http)
    assert metrics.value("p2pcache_transfers_total", outcome="ok") == len(items)
    # Cached now: offered as zstd with its exact size, read back from the cache.
    again = await guix_client.narinfos(host, port, wanted[:1])
    assert parse_narinfo(again[0].body).urls[0].compression == "zstd"


async def test_batches_of_misses_are_checked_in_the_nodes_checking_process(network, http, probe):
    """A node process starts its narinfo checking process (spawned: a fresh interpreter that
    imports the checks) at its first batch of misses, and later batches are checked there.

    Only narinfos that reach the check in the same loop iteration go to the process (a lone
    one is checked on the loop), and when lookups end is up to the network: so after the
    process is up, batches of fresh items are sent until one is checked there."""
    items = network.small_items()[4:-1]  # the lying-peer test uses the last one
    assert len(items) >= 15
    await wait_for_providers(probe, network.seed, items, 1)
    host, port = network.guix.guix_address

    async def batch(part: list[StoreItemInfo]) -> Metrics:
        replies = await guix_client.narinfos(host, port, [hash_part(i) for i in part])
        assert [r.status for r in replies] == [200] * len(part)
        return await network.guix.metrics(http)

    first = await batch(items[:3])  # checked on the loop while the process starts
    assert first.value("p2pcache_narinfo_checks_total", where="loop") >= 3
    deadline = time.monotonic() + 30
    while (await network.guix.metrics(http)).value("p2pcache_narinfo_check_processes") < 1:
        assert time.monotonic() < deadline, "the narinfo checking process never came up"
        await asyncio.sleep(0.2)
    before = first.value("p2pcache_narinfo_checks_total", where="worker")
    for start in range(3, len(items), 4):
        last = await batch(items[start : start + 4])
        if last.value("p2pcache_narinfo_checks_total", where="worker") - before >= 2:
            break
    assert last.value("p2pcache_narinfo_checks_total", where="worker") - before >= 2
    assert last.value("p2pcache_narinfo_check_worker_restarts_total") == 0


class LyingPeer:
    """A peer in the test process that announces items in the DHT and serves them with a
    narinfo signed by a key the victim trusts, but with a byte flipped in every frame."""

    def __init__(self, key: GuixSecretKey, host: str, bootstrap: tuple[str, int]) -> None:
        self.key = key
        self.host = host
        self.bootstrap = bootstrap
        self.dht = DHTNode(NodeIdentity.generate(), DHTConfig(rpc_timeout=0.5))
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> LyingPeer:
        await self.dht.start(self.host, 0, [self.bootstrap])
        self._stack.push_async_callback(self.dht.stop)
        return self

    async def serve(self, data_dir: Path, store: TestStore, items: list[StoreItemInfo]) -> str:
        """Serve (corrupted) and announce `items` of `store`; returns the peer URL."""
        cache = await seed_cache(data_dir, store, self.key, items, host="liar")
        self._stack.push_async_callback(cache.index.close)
        url = await self._stack.enter_async_context(
            peer_server(cache, self.host, CorruptingPeerAPI)
        )
        await self.dht.announce([hash_part(i) for i in items], url)
        return url

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


def nar_files(node: NodeProcess) -> set[str]:
    return {str(p.relative_to(node.data_dir)) for p in (node.data_dir / "nar").rglob("*")}


async def test_a_peer_sending_wrong_bytes_gets_nothing_accepted_and_is_banned(
    network, http, probe, tmp_path
):
    victim = network.victim
    host, port = victim.guix_address
    own = generate_test_store(tmp_path / "liar-store", items=12, seed=2, large_items=0)
    known = {i.path for i in network.store.items}
    only_liar = [i for i in own.items if i.path not in known and 1000 < i.nar_size < 1 << 20]
    only_liar = only_liar[:4]
    legit = network.small_items()[-1]
    assert len(only_liar) == 4
    async with LyingPeer(network.liar_key, "127.0.45.1", network.seed.dht_address) as liar:
        await liar.serve(tmp_path / "liar-own", own, only_liar)
        await liar.serve(tmp_path / "liar-legit", network.store, [legit])
        await wait_for_providers(probe, network.seed, only_liar, 1)
        await wait_for_providers(probe, network.seed, [legit], 3)
        # An item the liar holds along with honest peers: its lies cost nothing.
        reply = (await guix_client.narinfos(host, port, [hash_part(legit)]))[0]
        assert reply.status == 200
        nar = await guix_client.get(host, port, "/" + parse_narinfo(reply.body).urls[0].url)
        assert nar.status == 200 and nar.complete
        assert hashlib.sha256(nar.body).digest() == legit.nar_sha256
        files_before = nar_files(victim)
        # Items only the liar holds: never served whole, never cached; the liar gets banned.
        for info in only_liar[:3]:
            reply = (await guix_client.narinfos(host, port, [hash_part(info)]))[0]
            if reply.status == 404:
                continue  # the liar was banned already, so it was not even asked
            assert reply.status == 200
            nar = await guix_client.get(host, port, "/" + parse_narinfo(reply.body).urls[0].url)
            # Its only chunk failed its check: not a byte of the NAR went out, and Guix is
            # told so before any (502: it tries the narinfo's next URL).
            assert nar.status == 502
            assert b"cannot be brought in" in nar.body
        metrics = await victim.metrics(http)
        assert metrics.value("p2pcache_peers_banned") == 1
        assert metrics.value("p2pcache_chunk_failures_total", reason="bad-chunk") >= 3
        assert metrics.value("p2pcache_transfers_total", outcome="ok") == 1
        # Once banned, the liar is not asked at all.
        last = await guix_client.narinfos(host, port, [hash_part(only_liar[3])])
        assert last[0].status == 404
    assert nar_files(victim) == files_before
    status = await victim.status(http)
    assert status["cache"]["baked"] == 1
    assert (await victim.health(http)) == (200, "ok\n")


def forged_record(key: bytes, record: ProviderRecord, signer: NodeIdentity) -> SignedRecord:
    """`record` under `key`, signed by `signer` whoever the record names (no checks)."""
    body = encode_body(record)
    signature = signer.signing_key.sign(signed_message(key, body)).signature
    return SignedRecord(key, record, body, signature, pack([body, signature]))


def near(node_id: bytes, distance: int) -> bytes:
    return (int.from_bytes(node_id, "big") ^ distance).to_bytes(20, "big")


async def test_forged_records_garbage_and_fake_ids_leave_the_victim_healthy(
    network, http, probe, tmp_path
):
    victim = network.victim
    target = victim.dht_address
    victim_id = await probe.ping(target)
    seed_id = await probe.ping(network.seed.dht_address)
    assert victim_id is not None and seed_id is not None
    # The other nodes of the cluster that the victim knows (not the lying peer of the test
    # before, which has stopped and may be dropped from the table at any time).
    cluster = {n.dht_address for n in (network.seed, network.second, network.guix, network.fetcher)}
    honest = {(ip, port) for _, ip, port in await probe.find_node(target, victim_id)} & cluster
    assert network.seed.dht_address in honest
    before = await victim.metrics(http)

    # An item signed by a key the victim trusts, served honestly, announced by nobody: only
    # an accepted forged record could lead the victim to it.
    other = generate_test_store(tmp_path / "other-store", items=6, seed=4, large_items=0)
    item = next(i for i in other.items if 1000 < i.nar_size < 1 << 20)
    h, key = hash_part(item), provider_key(hash_part(item))
    cache = await seed_cache(tmp_path / "honest", other, network.liar_key, [item], host="liar")
    seed_identity = parse_identity((network.seed.data_dir / "identity.key").read_bytes())
    attacker = NodeIdentity.generate()
    now = int(time.time())
    evil = await DHTProbe.open("127.0.48.1", node_id=seed_id)  # claims to be the seed
    try:
        async with peer_server(cache, "127.0.46.1") as url:
            in_seeds_name = ProviderRecord(seed_identity.public_key, url, now, now + 3600)
            own = ProviderRecord(attacker.public_key, url, now, now + 3600)
            stale = ProviderRecord(attacker.public_key, url, now - 7200, now - 3600)
            refused = {
                "signed by another key": encode_value(
                    [forged_record(key, in_seeds_name, attacker)]
                ),
                "signed for another item": encode_value(
                    [sign_record(provider_key(ABSENT), own, attacker.signing_key)]
                ),
                "expired": encode_value([forged_record(key, stale, attacker)]),
                "oversized value": b"\x91" + b"\xc4" * 8100,
                "not bytes": [1, 2, 3],
            }
            for what, value in refused.items():
                assert await evil.store(target, key, value) is False, what
            # Datagrams no honest node sends, one of each kind, then a paced stream of junk (an
            # unpaced one only fills the socket's buffer, and the kernel drops the rest).
            evil.send(b"\x00" + os.urandom(20) + b"\x00" * 60_000, target)  # oversized datagram
            evil.send(b"\x00" + os.urandom(20) + b"\x91" * 8000 + b"\xc0", target)  # deep nesting
            evil.send(request_datagram("find_node", [b"short", key]), target)
            evil.send(request_datagram("no_such_rpc", [seed_id]), target)
            rng = random.Random(7)
            for n in range(300):
                size = rng.choice((1, 21, 22, 40, 200, 1400))
                evil.send(bytes([rng.choice((0, 1, 7))]) + rng.randbytes(size), target)
                if n % 25 == 24:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            # Nothing was accepted: the victim holds no record for the key and cannot find the
            # item, and the seed's id still points at the seed.
            assert await probe.records(target, key) == []
            narinfo = await guix_client.narinfos(*victim.guix_address, [h])
            assert narinfo[0].status == 404
            # (FIND_NODE leaves out the id asked for: ask for its neighbour.)
            contacts = await probe.find_node(target, near(seed_id, 1))
            assert [c for c in contacts if c[0] == seed_id] == [
                (seed_id, *network.seed.dht_address)
            ]
            # The same record, signed by the key it names, is accepted: the forgeries failed
            # for what they were, not for how this test built them.
            assert await evil.store(
                target, key, encode_value([sign_record(key, own, attacker.signing_key)])
            )
            assert [r.record.endpoint for r in await probe.records(target, key)] == [url]
    finally:
        evil.close()
        await cache.index.close()

    # A flood of fake ids: hundreds from one socket (many next to the victim's own id, to take
    # its neighbourhood), and a few from each of twenty addresses in one /24.
    flood = await DHTProbe.open("127.0.49.1")
    subnet = [await DHTProbe.open(f"127.0.50.{n}") for n in range(1, 21)]
    try:
        for n in range(300):
            fake = near(victim_id, n + 1) if n % 2 else os.urandom(20)
            flood.send(request_datagram("ping", [fake]), target)
            if n % 50 == 49:
                await asyncio.sleep(0.01)
        for sock in subnet:
            for n in range(5):
                sock.send(request_datagram("ping", [near(victim_id, 1000 + n)]), target)
        await asyncio.sleep(0.3)
    finally:
        flood.close()
        for sock in subnet:
            sock.close()
    closest = await probe.find_node(target, victim_id)
    addresses = [(ip, port) for _, ip, port in closest]
    assert honest <= set(addresses), "honest peers were pushed out of the routing table"
    assert sum(ip == "127.0.49.1" for ip, _ in addresses) <= 2
    assert sum(ip.startswith("127.0.50.") for ip, _ in addresses) <= 8

    # Still healthy: it answers, serves a legitimate item fetched from its honest peers, and
    # says what it refused.
    assert (await victim.health(http)) == (200, "ok\n")
    legit = network.small_items()[0]
    reply = (await guix_client.narinfos(*victim.guix_address, [hash_part(legit)]))[0]
    assert reply.status == 200
    nar = await guix_client.get(*victim.guix_address, "/" + parse_narinfo(reply.body).urls[0].url)
    assert nar.complete and hashlib.sha256(nar.body).digest() == legit.nar_sha256
    after = await victim.metrics(http)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("p2pcache_dht_records_rejected_total", reason="bad_signature") >= 2
    assert grew("p2pcache_dht_records_rejected_total", reason="expired") >= 1
    assert grew("p2pcache_dht_records_rejected_total", reason="oversize") >= 1
    for reason in (
        "oversize",
        "malformed",
        "short",
        "unknown_type",
        "bad_arguments",
        "unknown_rpc",
    ):
        assert grew("p2pcache_dht_datagrams_dropped_total", reason=reason) >= 1, reason
    assert grew("p2pcache_dht_datagrams_dropped_total") >= 200
    # The table is small enough that FIND_NODE returned all of it (but the probe itself), so
    # the limits above held for the whole table.
    assert after.value("p2pcache_dht_routing_table_size") <= len(closest) + 1 < 20


async def read_some(reader: asyncio.StreamReader, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = await reader.read(count - len(data))
        if not piece:
            break
        data += piece
    return data


async def test_killing_a_provider_mid_transfer_the_other_completes_it(network, http, probe):
    large = network.large
    assert large.nar_size > LARGE_MIN
    await wait_for_providers(probe, network.seed, [large], 2)
    host, port = network.fetcher.guix_address
    served_before = {
        p.name: (await p.metrics(http)).value("p2pcache_transfer_bytes_total", direction="out")
        for p in (network.seed, network.second)
    }
    reply = (await guix_client.narinfos(host, port, [hash_part(large)]))[0]
    assert reply.status == 200
    url = parse_narinfo(reply.body).urls[0].url
    # A client that reads slowly: a small receive buffer, and a pause after the first MiB, so
    # the fetch stalls within its window with chunks still to fetch.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    try:
        writer.write(guix_client.request(f"/{url}", f"{host}:{port}"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        body = await read_some(reader, 1 << 20)
        # Both providers are in use before one of them dies.
        deadline = time.monotonic() + 10
        for provider in (network.seed, network.second):
            while (await provider.metrics(http)).value(
                "p2pcache_transfer_bytes_total", direction="out"
            ) == served_before[provider.name]:
                assert time.monotonic() < deadline, f"{provider.name} served nothing"
                await asyncio.sleep(0.05)
        before = await network.fetcher.metrics(http)
        assert before.value("p2pcache_transfers_total") == 0  # still going
        network.second.kill()
        body += await read_some(reader, large.nar_size - len(body))
    finally:
        writer.close()
    assert len(body) == large.nar_size
    assert hashlib.sha256(body).digest() == large.nar_sha256
    metrics = await network.fetcher.metrics(http)
    assert metrics.value("p2pcache_transfers_total", outcome="ok") == 1
    assert metrics.value("p2pcache_transfer_failovers_total") >= 1
    status = await network.fetcher.status(http)
    assert status["cache"]["baked"] == 1
    assert "from 2 peer(s)" in network.fetcher.log_text()
