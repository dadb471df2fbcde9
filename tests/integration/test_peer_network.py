"""Several real nodes on loopback: an item held by one is served to Guix by another.

Every node gets its own 127.A.B.1 address, so the DHT's per-IP and per-/24 limits stay on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys

import aiohttp
import pytest

from p2pcache import network as network_module
from p2pcache.cache.index import Origin
from p2pcache.config import ListenAddress
from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.guix.signing_key import render_acl
from p2pcache.net.peer_client import PeerClient
from p2pcache.node import Node
from tests import guix_client
from tests.integration.conftest import node_config, running_node


def addresses(n: int) -> dict:
    host = f"127.0.{20 + n}.1"
    return {
        "listen": ListenAddress(host, 0),
        "peer_listen": ListenAddress(host, 0),
        "dht_listen": ListenAddress(host, 0),
    }


async def baked(node: Node, count: int) -> list:
    items = []
    for info in node_store_items(node)[:count]:
        await node.publisher.bake(node.publisher._job(info))
        items.append(info)
    return items


def node_store_items(node: Node):
    return sorted(node._test_store.items, key=lambda i: -i.nar_size)


@contextlib.asynccontextmanager
async def network(tmp_path, store, count: int = 3):
    """A seeding node (index 0) holding `store`, and `count - 1` empty nodes joined to it."""
    async with contextlib.AsyncExitStack() as stack:
        seed = await stack.enter_async_context(
            running_node(node_config(tmp_path / "n0", store, **addresses(0)))
        )
        seed._test_store = store
        acl = tmp_path / "acl"
        acl.write_bytes(render_acl([seed.key.public]))
        bootstrap = (ListenAddress(*seed.network.dht.address),)
        nodes = [seed]
        for n in range(1, count):
            node = await stack.enter_async_context(
                running_node(
                    node_config(
                        tmp_path / f"n{n}", None, guix_acl=acl, bootstrap=bootstrap, **addresses(n)
                    )
                )
            )
            nodes.append(node)
        yield nodes


async def wait_until_findable(node: Node, items: list, providers: int = 1) -> None:
    """Announcements are batched: wait until `node` finds every item's providers."""
    for info in items:
        h = info.path.rsplit("/", 1)[-1][:32]
        for _ in range(200):
            if len(await node.network._find_providers(h)) >= providers:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{h} is not findable in the DHT")


async def test_an_item_held_by_a_peer_is_served_to_guix_and_then_provided(tmp_path, test_store):
    async with network(tmp_path, test_store, 3) as (seed, b, c):
        items = await baked(seed, 3)
        await wait_until_findable(b, items)
        host = b.config.listen.host
        wanted = [i.path.rsplit("/", 1)[-1][:32] for i in items]
        replies = await guix_client.narinfos(host, b.guix_port, [*wanted, "0" * 32])
        assert [r.status for r in replies] == [200, 200, 200, 404]
        for info, reply in zip(items, replies, strict=False):
            narinfo = parse_narinfo(reply.body)
            seed_item = seed.index.get(info.path.rsplit("/", 1)[-1][:32])
            # The seed's signed part and signature, byte for byte, then b's own URL group.
            assert reply.body.startswith(seed_item.signed_part + seed_item.signature)
            assert [(u.compression, u.file_size) for u in narinfo.urls] == [("none", info.nar_size)]
        big = items[0]
        base = big.path.rsplit("/", 1)[-1]
        nar = await guix_client.get(host, b.guix_port, f"/nar/{base}")
        assert nar.status == 200 and nar.complete
        assert hashlib.sha256(nar.body).digest() == big.nar_sha256
        item_at_b = b.index.get(base[:32])
        assert item_at_b.is_baked and item_at_b.origin is Origin.PEER
        # b now provides it too: c finds two providers, and fetches it.
        await wait_until_findable(c, [big], providers=2)
        at_c = await guix_client.narinfos(c.config.listen.host, c.guix_port, [base[:32]])
        assert at_c[0].status == 200
        nar_c = await guix_client.get(c.config.listen.host, c.guix_port, f"/nar/{base}")
        assert hashlib.sha256(nar_c.body).digest() == big.nar_sha256


async def test_a_nar_asked_for_without_its_narinfo_is_found_through_the_dht(tmp_path, test_store):
    """Guix may hold a narinfo this node forgot (restarted with a new data directory, the
    promise expired): the NAR request alone finds the item at a peer and brings it in."""
    async with network(tmp_path, test_store, 2) as (seed, b):
        (item,) = await baked(seed, 1)
        await wait_until_findable(b, [item])
        base = item.path.rsplit("/", 1)[-1]
        assert b.index.get(base[:32]) is None
        nar = await guix_client.get(b.config.listen.host, b.guix_port, f"/nar/{base}")
        assert nar.status == 200 and nar.complete
        assert hashlib.sha256(nar.body).digest() == item.nar_sha256
        assert b.index.get(base[:32]).is_baked


async def test_what_guix_and_peers_fetch_counts_as_demand_for_announcing(tmp_path, test_store):
    """The announcer's "popular" tier is fed by NAR requests from Guix and chunk requests
    from peers (items still waiting to be announced go before the rest of the store)."""
    async with network(tmp_path, test_store, 2) as (seed, _):
        announcer = seed.network.announcer
        await announcer.stop()  # hold announcing, so the item stays queued
        (item,) = await baked(seed, 1)
        h = item.path.rsplit("/", 1)[-1][:32]
        assert announcer.request_count(h) == 0
        base = item.path.rsplit("/", 1)[-1]
        nar = await guix_client.get(seed.config.listen.host, seed.guix_port, f"/nar/{base}")
        assert nar.status == 200
        await seed._flush_access_times()  # what the housekeeping task does periodically
        assert announcer.request_count(h) == 1
        async with aiohttp.ClientSession() as session:
            client = PeerClient(session)
            table = await client.chunk_table(seed.network.peer_url, h)
            async for _ in client.frames(seed.network.peer_url, h, table, 0, 1):
                pass
        for _ in range(100):  # noted once the peer API has finished the response
            if announcer.request_count(h) == 2:
                break
            await asyncio.sleep(0.02)
        assert announcer.request_count(h) == 2


async def test_untrusted_seed_is_refused(tmp_path, test_store):
    async with network(tmp_path, test_store, 2) as (seed, b):
        items = await baked(seed, 1)
        await wait_until_findable(b, items)
        b.network.resolver.acl = []  # b trusts nobody
        h = items[0].path.rsplit("/", 1)[-1][:32]
        replies = await guix_client.narinfos(b.config.listen.host, b.guix_port, [h])
        assert replies[0].status == 404
        # Every source answered: a conclusive absence, cached by Guix for negative_ttl.
        assert replies[0].headers["cache-control"] == f"max-age={b.config.negative_ttl}"
        assert b.index.get(h) is None


async def test_a_miss_no_peer_could_answer_is_not_remembered_as_absent(tmp_path, test_store):
    """A DHT lookup nobody answered says nothing about the item: the miss is answered 404
    now, but asked again next time (not held as absent for negative_ttl), and the silent
    contact is kept, so once it answers again the item is found."""
    async with network(tmp_path, test_store, 2) as (seed, b):
        await seed.network.announcer.stop()  # the seed announces by hand below
        (item,) = await baked(seed, 1)
        h = item.path.rsplit("/", 1)[-1][:32]
        host = b.config.listen.host
        seed_dht = seed.network.dht
        address = seed_dht.address
        await seed_dht.stop()  # b's only DHT contact is silent for one request
        try:
            replies = await guix_client.narinfos(host, b.guix_port, [h])
        finally:
            await seed_dht.start(*address)  # the same node at the same address
        assert replies[0].status == 404
        assert replies[0].headers["cache-control"] == "max-age=0"  # Guix asks again
        assert b"ask again later" in replies[0].body
        assert b.network.counters.misses == {"inconclusive": 1}
        assert b.network.dht.stats.lookups[("providers", "incomplete")] == 1
        assert b.network.dht.stats.routing_table_size == 1  # kept: one silence is not death
        await seed_dht.announce([h], seed.network.peer_url)
        await wait_until_findable(b, [item])
        replies = await guix_client.narinfos(host, b.guix_port, [h])
        assert replies[0].status == 200
        assert b.network.counters.misses == {"inconclusive": 1, "found": 1}


def provider_lookups(node: Node) -> int:
    lookups = node.network.dht.stats.lookups
    return sum(count for (kind, _), count in lookups.items() if kind == "providers")


async def test_the_peer_that_provided_the_last_miss_is_asked_before_the_dht(tmp_path, test_store):
    """After one miss found through the DHT, the next misses go to the peer that provided it
    (a Guix batch asks for a closure): no DHT search for what it holds, one for what it lacks."""
    async with network(tmp_path, test_store, 2) as (seed, b):
        items = await baked(seed, 5)
        await wait_until_findable(b, items)
        hashes = [i.path.rsplit("/", 1)[-1][:32] for i in items]
        host = b.config.listen.host
        before = provider_lookups(b)
        (first,) = await guix_client.narinfos(host, b.guix_port, hashes[:1])
        assert first.status == 200
        assert provider_lookups(b) == before + 1
        replies = await guix_client.narinfos(host, b.guix_port, [*hashes[1:], "0" * 32])
        assert [r.status for r in replies] == [200, 200, 200, 200, 404]
        assert provider_lookups(b) == before + 2  # only for the item nobody holds
        searches = b.network.counters.provider_searches
        assert searches["recent"] == 4 and searches["held"] == 4
        assert searches["not-held"] == 1 and searches["dht"] == 2
        # The NAR of an item found that way is still fetched with a search for providers.
        base = items[1].path.rsplit("/", 1)[-1]
        nar = await guix_client.get(host, b.guix_port, f"/nar/{base}")
        assert hashlib.sha256(nar.body).digest() == items[1].nar_sha256
        assert provider_lookups(b) == before + 3


async def test_a_fresh_nodes_first_batch_asks_the_first_provider_instead_of_waiting(
    tmp_path, test_store, monkeypatch
):
    """No peer has provided yet, so every miss of the batch searches, one search at a time
    here; once the seed has provided, the misses still waiting for a search ask it instead."""
    monkeypatch.setattr(network_module, "MAX_CONCURRENT_SEARCHES", 1)
    async with network(tmp_path, test_store, 2) as (seed, b):
        items = await baked(seed, 10)
        await wait_until_findable(b, items)
        dht = b.network.dht
        find_providers, searches = dht.find_providers, []

        async def over_a_wan(hash_part: str):
            searches.append(hash_part)
            await asyncio.sleep(0.1)  # a search's round trips, which loopback does not have
            return await find_providers(hash_part)

        dht.find_providers = over_a_wan
        hashes = [i.path.rsplit("/", 1)[-1][:32] for i in items]
        replies = await guix_client.narinfos(b.config.listen.host, b.guix_port, hashes)
        assert [r.status for r in replies] == [200] * 10
        assert 1 <= len(searches) <= 3, searches  # not 10 searches one after another
        assert b.network.counters.provider_searches["held"] >= 7


@pytest.mark.parametrize("misses", [200])
async def test_pipelined_misses_resolve_concurrently(tmp_path, test_store, misses, monkeypatch):
    """A batch of misses must not take one lookup after another; the DHT searches among
    them are bounded on their own (here to 4, from MAX_CONCURRENT_SEARCHES)."""
    monkeypatch.setattr(network_module, "MAX_CONCURRENT_SEARCHES", 4)
    async with network(tmp_path, test_store, 2) as (_, b):
        dht, searching, most = b.network.dht, [0], [0]
        find_providers = dht.find_providers

        async def counted(hash_part: str):
            searching[0] += 1
            most[0] = max(most[0], searching[0])
            try:
                return await find_providers(hash_part)
            finally:
                searching[0] -= 1

        dht.find_providers = counted
        loop = asyncio.get_running_loop()
        started = loop.time()
        await guix_client.narinfos(b.config.listen.host, b.guix_port, ["1" * 32])
        one = loop.time() - started
        batch = [f"{n:032d}".replace("e", "f")[-32:] for n in range(misses)]
        started = loop.time()
        replies = await guix_client.narinfos(b.config.listen.host, b.guix_port, batch)
        many = loop.time() - started
        assert all(r.status == 404 for r in replies)
        assert many < max(5 * one, 2.0), (one, many)
        assert most[0] == 4


async def test_which_finds_who_holds_a_derivations_outputs(tmp_path, test_store):
    async with network(tmp_path, test_store, 2) as (seed, b):
        with_deriver = [i for i in node_store_items(seed) if i.deriver and i.nar_size < 2_000_000][
            :2
        ]
        for info in with_deriver:
            await seed.publisher.bake(seed.publisher._job(info))
        drv = with_deriver[0].deriver
        drv_hash = drv.rsplit("/", 1)[-1][:32]
        outputs = test_store.derivation_outputs[drv]
        await wait_until_findable(b, with_deriver)
        holders = []
        for _ in range(100):
            holders = await b.network.which(drv_hash)
            if holders:
                break
            await asyncio.sleep(0.1)
        assert [h["endpoint"] for h in holders] == [seed.network.peer_url]
        held = holders[0]["outputs"]
        baked = {i.path for i in with_deriver}
        assert {f"/gnu/store/{v}" for v in held.values()} == {
            p for p in outputs.values() if p in baked
        }
        admin = f"{b.config.admin_listen.host}:{b.admin_port}"
        result = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pcache", "which", "--admin", admin, drv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await result.communicate()
        assert result.returncode == 0, err
        assert seed.network.peer_url.encode() in out
        assert with_deriver[0].path.encode() in out
