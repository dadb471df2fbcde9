"""Five real `p2pcache serve` processes on loopback, each on its own 127.0.4X.1.

`seed` and `second` publish the same generated store (with one item of about 56 MiB); `guix`,
`fetcher` and `victim` start empty and join the DHT through `seed`. Their Guix ACL holds the
seeders' keys (and, for `victim`, a key whose holder runs a lying peer). The tests run in file
order: the provider that is killed mid-transfer is killed last.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.guix.signing_key import (
    GuixSecretKey,
    load_key_pair,
    parse_acl,
    render_acl,
    write_key_pair,
)
from p2pcache.guix.store_db import StoreItemInfo
from p2pcache.net.provider_record import provider_key
from p2pcache.testing import TestStore, generate_test_store, remove_test_store
from p2pcache.trust.narinfo_acceptance import accept_relayed_narinfo
from tests import guix_client
from tests.integration.dht_probe import DHTProbe
from tests.integration.node_processes import NodeCluster, NodeProcess, NodeSpec, publish_all

# Fifteen items, one of them an output with a 55 MiB library (57 chunks of 1 MiB): enough
# chunks that a fetch is still going when a provider dies, with batches left to move.
STORE = {"items": 15, "seed": 6, "large_items": 1, "max_file_size": 64 << 20}
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
            joined = {"bootstrap": ["{}:{}".format(*seed.dht_address)]}
            second.spec.bootstrap = joined["bootstrap"]
            guix = cluster.add(
                NodeSpec("guix", "127.0.42.1", root / "guix", guix_acl=acl, **joined)
            )
            fetcher = cluster.add(
                NodeSpec(
                    "fetcher", "127.0.43.1", root / "fetcher", guix_acl=acl, fetch_parallel=2,
                    **joined,
                )
            )  # fmt: skip
            victim = cluster.add(
                NodeSpec("victim", "127.0.44.1", root / "victim", guix_acl=victim_acl, **joined)
            )
            cluster.start([second, guix, fetcher, victim])
            yield Network(
                store, seed, second, guix, fetcher, victim, load_key_pair(root / "liar-key")
            )
    finally:
        remove_test_store(root / "store")


@pytest.fixture
async def http() -> Iterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def probe() -> Iterator[DHTProbe]:
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
