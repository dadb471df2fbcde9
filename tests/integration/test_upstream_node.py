"""A node with upstream substitute servers configured, end to end: back to the source.

A real node (no store, no peers) has a real upstream server on loopback
(tests/net/upstream_server.py) whose signing key is in the node's Guix ACL. A Guix-style
client asks the node, which has never seen the items, for their narinfos and NARs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from p2pcache import network
from p2pcache import node as node_module
from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.guix.signing_key import render_acl
from tests import guix_client
from tests.cache.test_index import backdate
from tests.integration.conftest import node_config, running_node
from tests.net.upstream_server import (  # noqa: F401 (fixtures)
    FakeUpstream,
    Item,
    item_fixture,
    small_item_fixture,
    trusted_key_fixture,
    upstream_fixture,
)

HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def node_with_upstream(tmp_path, upstream: FakeUpstream, key, **changes) -> AsyncIterator:
    acl = tmp_path / "acl"
    acl.write_bytes(render_acl([key.public]))
    config = node_config(
        tmp_path / "node",
        None,
        guix_acl=acl,
        upstreams=(upstream.url,),
        miss_timeout=30.0,  # a loaded 2-core machine must not turn a slow miss into a 404
        **changes,
    )
    async with running_node(config) as node:
        yield node


async def until_item(node, hash_part: str, wanted, what: str) -> None:
    """Wait (10 s at most) until the index's row for `hash_part` is as `wanted` says."""
    for _ in range(400):
        if wanted(node.index.get(hash_part)):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{hash_part} was never {what}")


async def until_baked(node, hash_part: str) -> None:
    await until_item(node, hash_part, lambda i: i is not None and i.is_baked, "cached")


async def until_forgotten(node, hash_part: str) -> None:
    await until_item(node, hash_part, lambda i: i is None, "forgotten")


async def test_an_upstream_item_is_relayed_then_fetched_then_cached(
    tmp_path, upstream, item, small_item, trusted_key
):
    narinfos = [i.publish(upstream, trusted_key) for i in (item, small_item)]
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        wanted = [item.hash_part, "0" * 32, small_item.hash_part]
        replies = await guix_client.narinfos(HOST, node.guix_port, wanted)
        assert [r.status for r in replies] == [200, 404, 200]
        provenances = node.network.resolver.provenances
        assert provenances.get(item.hash_part).source == upstream.url
        for reply, served, it in zip(
            (replies[0], replies[2]), narinfos, (item, small_item), strict=True
        ):
            # The upstream's signed part and signature, byte for byte; the node's own URL.
            assert reply.body.startswith(served[: served.index(b"URL:")])
            narinfo = parse_narinfo(reply.body)
            [group] = narinfo.urls
            assert group.compression == "none" and group.file_size == len(it.nar)
            nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
            assert nar.status == 200 and nar.complete
            assert nar.body == it.nar
            await until_baked(node, it.hash_part)
            assert provenances.get(it.hash_part) is None  # cached: no longer needed
        # Cached now: offered as zstd, and the upstream is not asked again.
        asked = len(upstream.requests)
        [again] = await guix_client.narinfos(HOST, node.guix_port, [item.hash_part])
        groups = parse_narinfo(again.body).urls
        assert groups[0].compression == "zstd"  # preferred, listed first
        group = groups[0]
        nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
        assert nar.status == 200 and nar.complete
        assert len(upstream.requests) == asked


async def test_a_head_request_for_a_nar_not_cached_fetches_nothing(
    tmp_path, upstream, small_item, trusted_key
):
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        path = f"/nar/{small_item.basename}"
        # Not even known yet: looked up (a narinfo request upstream), not downloaded.
        [head] = await guix_client.pipelined_get(HOST, node.guix_port, [path], method="HEAD")
        assert head.status == 200
        assert int(head.headers["content-length"]) == len(small_item.nar)
        [again] = await guix_client.pipelined_get(HOST, node.guix_port, [path], method="HEAD")
        assert again.status == 200
        assert upstream.requests == [f"/{small_item.hash_part}.narinfo"]
        assert not node.index.get(small_item.hash_part).is_baked


async def test_a_nar_promised_before_a_restart_is_still_fetched(
    tmp_path, upstream, small_item, trusted_key
):
    """Guix keeps a narinfo for hours and may ask for the NAR later, of a node restarted since
    (or of one that promised many other items since): the NAR still comes from the upstream."""
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        assert reply.status == 200
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [group] = parse_narinfo(reply.body).urls
        nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
        assert nar.status == 200 and nar.complete
        assert nar.body == small_item.nar
        await until_baked(node, small_item.hash_part)


async def test_an_evicted_item_is_fetched_again_through_the_narinfos_next_url(
    tmp_path, upstream, small_item, trusted_key
):
    """Guix tries a narinfo's URLs in turn (zstd first, being smaller) and moves on at a
    non-200: a NAR evicted since its narinfo was given still comes, through `none`."""
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        [group] = parse_narinfo(reply.body).urls
        await guix_client.get(HOST, node.guix_port, "/" + group.url)
        await until_baked(node, small_item.hash_part)
        [cached] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        urls = [g.url for g in parse_narinfo(cached.body).urls]
        assert [g.compression for g in parse_narinfo(cached.body).urls] == ["zstd", "none"]
        assert (await node.quota.enforce(max_size=0)).items == 1
        assert node.index.get(small_item.hash_part) is None
        assert (await guix_client.get(HOST, node.guix_port, "/" + urls[0])).status == 404
        nar = await guix_client.get(HOST, node.guix_port, "/" + urls[1])
        assert nar.status == 200 and nar.body == small_item.nar


async def test_a_nar_of_an_item_the_node_never_promised_is_looked_up_first(
    tmp_path, upstream, small_item, trusted_key
):
    """Guix may hold a narinfo this node never gave (or forgot: its data was reset, the
    promise expired): the NAR request is looked up as a miss, then served."""
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        assert node.index.get(small_item.hash_part) is None
        other_name = f"/nar/{small_item.hash_part}-other-1.0"
        assert (await guix_client.get(HOST, node.guix_port, other_name)).status == 404
        zstd = await guix_client.get(HOST, node.guix_port, f"/nar/zstd/{small_item.basename}")
        assert zstd.status == 404  # not cached: no zstd file to send
        nar = await guix_client.get(HOST, node.guix_port, f"/nar/{small_item.basename}")
        assert nar.status == 200 and nar.complete and nar.body == small_item.nar
        await until_baked(node, small_item.hash_part)
        unknown = await guix_client.get(HOST, node.guix_port, f"/nar/{'0' * 32}-x")
        assert unknown.status == 404


async def test_an_unfetched_promise_expires_and_is_looked_up_afresh(
    tmp_path, upstream, small_item, trusted_key, monkeypatch
):
    monkeypatch.setattr(node_module, "HOUSEKEEPING_INTERVAL", 0.05)
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key, promise_ttl=3600) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        assert reply.status == 200
        await asyncio.sleep(0.2)  # housekeeping ran: an hour-old promise is not forgotten
        assert node.index.get(small_item.hash_part) is not None
        backdate(node.index, [small_item.hash_part], int(time.time()) - 3601)
        await until_forgotten(node, small_item.hash_part)
        assert node.network.resolver.provenances.get(small_item.hash_part) is None
        expired = node.metrics.registry.get_sample_value("p2pcache_cache_promises_expired_total")
        assert expired == 1
        asked = len(upstream.requests)
        # Guix kept the narinfo: its NAR is looked up afresh, then sent.
        [group] = parse_narinfo(reply.body).urls
        nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
        assert nar.status == 200 and nar.body == small_item.nar
        assert f"/{small_item.hash_part}.narinfo" in upstream.requests[asked:]


async def test_a_promise_being_fetched_does_not_expire(
    tmp_path, upstream, item, trusted_key, monkeypatch
):
    monkeypatch.setattr(node_module, "HOUSEKEEPING_INTERVAL", 0.05)
    item.publish(upstream, trusted_key)
    nar_path = "/" + item.nar_url("zstd")
    upstream.hang_after(nar_path, item.zstd[: len(item.zstd) // 2], content_length=len(item.zstd))
    async with node_with_upstream(tmp_path, upstream, trusted_key, promise_ttl=3600) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [item.hash_part])
        [group] = parse_narinfo(reply.body).urls
        reader, writer = await asyncio.open_connection(HOST, node.guix_port)
        writer.write(guix_client.request("/" + group.url, HOST))
        head = await guix_client.read_reply(reader, head_only=True)
        assert head.status == 200  # and the NAR is on its way from the hanging upstream
        backdate(node.index, [item.hash_part], int(time.time()) - 7200)
        await asyncio.sleep(0.3)  # several housekeeping rounds
        assert node.index.get(item.hash_part) is not None
        # The client goes away (a reset, as when guix is killed): the download ends, and the
        # promise expires.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await until_forgotten(node, item.hash_part)
        # Asked for again, the narinfo is looked up afresh (no answer kept rendered or hot).
        [again] = await guix_client.narinfos(HOST, node.guix_port, [item.hash_part])
        assert again.status == 200
        assert upstream.requests.count(f"/{item.hash_part}.narinfo") == 2


async def test_only_the_oldest_kept_narinfos_are_asked_for_again(
    tmp_path, upstream, item, small_item, trusted_key, monkeypatch
):
    monkeypatch.setattr(network, "MAX_KEPT_UPSTREAM_NARINFOS", 1)
    for it in (item, small_item):
        it.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        wanted = [item.hash_part, small_item.hash_part]
        replies = await guix_client.narinfos(HOST, node.guix_port, wanted)
        for reply, it in zip(replies, (item, small_item), strict=True):
            [group] = parse_narinfo(reply.body).urls
            nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
            assert nar.status == 200 and nar.body == it.nar
        asked = Counter(p for p in upstream.requests if p.endswith(".narinfo"))
        # One pushed the other out (whichever was kept first): that one was asked again.
        assert set(asked) == {f"/{h}.narinfo" for h in wanted}
        assert sorted(asked.values()) == [1, 2]


async def test_a_nar_whose_upstream_changed_its_narinfo_is_refused(
    tmp_path, upstream, small_item, trusted_key
):
    """After a restart the node asks the upstream again; a narinfo that no longer matches
    the promised item (another NarHash) gets no byte through, and nothing is cached."""
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        assert reply.status == 200
    other = Item(small_item.name, small_item.nar + b"\0" * 8)  # same store path, other NAR
    other.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [group] = parse_narinfo(reply.body).urls
        nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
        assert nar.status == 502  # before any byte: Guix moves on to the next URL
        # The promise is withdrawn: asked again, the node offers what the upstream has now.
        assert node.index.get(small_item.hash_part) is None
        [now] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        assert now.status == 200
        assert parse_narinfo(now.body).nar_size == len(other.nar)
        [group] = parse_narinfo(now.body).urls
        nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
        assert nar.status == 200 and nar.body == other.nar


@pytest.mark.parametrize("down", ["narinfo", "nar"])
async def test_an_upstream_gone_at_nar_time_is_a_clear_failure(
    tmp_path, upstream, small_item, trusted_key, down
):
    small_item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
        assert reply.status == 200
    if down == "narinfo":
        del upstream.routes[f"/{small_item.hash_part}.narinfo"]
    else:
        del upstream.routes["/" + small_item.nar_url("zstd")]
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [group] = parse_narinfo(reply.body).urls
        nar = await guix_client.get(HOST, node.guix_port, "/" + group.url)
        assert nar.status == 502  # before any byte: Guix moves on to the next URL
        item = node.index.get(small_item.hash_part)
        if down == "narinfo":  # the upstream says it has it no more: the promise is withdrawn
            assert item is None
            [now] = await guix_client.narinfos(HOST, node.guix_port, [small_item.hash_part])
            assert now.status == 404
        else:  # maybe a passing failure: still promised, not cached
            assert not item.is_baked


async def test_two_clients_asking_for_one_nar_at_once_cause_one_download(
    tmp_path, upstream, item, trusted_key
):
    item.publish(upstream, trusted_key)
    async with node_with_upstream(tmp_path, upstream, trusted_key) as node:
        [reply] = await guix_client.narinfos(HOST, node.guix_port, [item.hash_part])
        [group] = parse_narinfo(reply.body).urls
        nars = await asyncio.gather(
            *(guix_client.get(HOST, node.guix_port, "/" + group.url) for _ in range(3))
        )
        assert all(nar.status == 200 and nar.body == item.nar for nar in nars)
        await until_baked(node, item.hash_part)
        assert upstream.requests.count("/" + item.nar_url("zstd")) == 1
        assert len(list(node.nar_store.iter_names())) == 1
