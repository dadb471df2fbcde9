"""The peer API over real sockets: what a client may fetch, and how bounded it is."""

import asyncio
import hashlib
import time
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from p2pcache.cache.chunked_zstd import decompress_frame
from p2pcache.guix.narinfo import parse_narinfo, render_signature_line, render_signed_part
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.peer_client import PeerClient, PeerLimits, PeerMisbehaved, PeerUnavailable
from p2pcache.server.admin_app import AiohttpListener
from p2pcache.trust.bundle_list import MAX_BUNDLE_LIST_SIZE, render_bundle_list
from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE
from p2pcache.trust.narinfo_acceptance import accept_relayed_narinfo
from tests.net.peer_servers import app_server, peer_server
from tests.seeded_cache import seed_cache


@pytest.fixture
async def seeded(tmp_path, small_test_store):
    items = sorted(small_test_store.items, key=lambda i: -i.nar_size)[:3]
    cache = await seed_cache(tmp_path / "seed", small_test_store, generate_key_pair(), items)
    yield cache, items
    await cache.index.close()


async def test_client_fetches_narinfo_table_and_frames(seeded):
    cache, items = seeded
    async with peer_server(cache, "127.0.2.1") as url, aiohttp.ClientSession() as session:
        client = PeerClient(session)
        info = await client.node_info(url)
        assert info.peer_url == url
        h = cache.hash_parts[0]
        narinfo = parse_narinfo(await client.narinfo(url, h))
        assert narinfo.store_path == items[0].path and narinfo.urls == ()
        table = await client.chunk_table(url, h)
        assert table.nar_size == items[0].nar_size
        data = b""
        async for index, frame in client.frames(url, h, table, 0, table.count):
            chunk = table.chunk(index)
            data += decompress_frame(frame, chunk.length, chunk.sha256)
        assert hashlib.sha256(data).digest() == items[0].nar_sha256
        assert await client.narinfo(url, "0" * 32) is None
        assert await client.chunk_table(url, "0" * 32) is None


async def test_items_baked_without_a_signature_are_signed_when_first_offered(
    tmp_path, small_test_store
):
    """`p2pcache publish` bakes items but holds no key: the node signs them when a peer asks."""
    key = generate_key_pair()
    item = max(small_test_store.items, key=lambda i: i.nar_size)
    cache = await seed_cache(tmp_path / "seed", small_test_store, key, [item], signed=False)
    h = cache.hash_parts[0]

    def sign(indexed):
        signed = render_signed_part(
            indexed.store_path, indexed.nar_hash, indexed.nar_size, indexed.references,
            indexed.deriver,
        )  # fmt: skip
        line = render_signature_line(signature_field(signed, key, "seed"))
        return replace(indexed, signed_part=signed, signature=line)

    try:
        async with aiohttp.ClientSession() as session:
            client = PeerClient(session)
            async with peer_server(cache, "127.0.3.1") as url:
                assert await client.narinfo(url, h) is None  # nobody to vouch for it
                assert await client.chunk_table(url, h) is None
            async with peer_server(cache, "127.0.3.1", sign_item=sign) as url:
                data = await client.narinfo(url, h)
                assert await client.chunk_table(url, h) is not None
        accepted = accept_relayed_narinfo(data, h, [key.public], "/gnu/store")
        assert accepted.narinfo.store_path == item.path
    finally:
        await cache.index.close()


async def test_bad_ranges_and_unknown_items_are_404(seeded):
    cache, _ = seeded
    h = cache.hash_parts[0]
    async with peer_server(cache) as url, aiohttp.ClientSession() as session:
        for path in (
            f"/p2p/v1/frames/{h}/0/0",
            f"/p2p/v1/frames/{h}/-1/1",
            f"/p2p/v1/frames/{h}/0/99999",
            f"/p2p/v1/frames/{h}/x/1",
            "/p2p/v1/narinfo/../../index.sqlite",
            "/p2p/v1/narinfo/" + "E" * 32,
            "/p2p/v1/chunks/short",
            f"/p2p/v1/narinfos/{h},{h}",  # a list names each item once
            "/p2p/v1/narinfos/" + ",".join([h] + [f"{n:032d}" for n in range(64)]),  # 65
            f"/p2p/v1/narinfos/{h},",
            f"/p2p/v1/narinfos/{h},../index.sqlite",
        ):
            async with session.get(url + path) as response:
                assert response.status == 404, path
                assert len(await response.read()) < 100


async def test_a_narinfo_list_answers_in_the_order_asked(seeded):
    cache, items = seeded
    unknown = "0" * 32
    asked = [cache.hash_parts[2], unknown, cache.hash_parts[0]]
    async with peer_server(cache, "127.0.2.2") as url, aiohttp.ClientSession() as session:
        client = PeerClient(session)
        found = await client.narinfos(url, asked)
        assert list(found) == asked
        assert found[unknown] is None
        for h in cache.hash_parts[::2]:
            assert found[h] == await client.narinfo(url, h)
        assert parse_narinfo(found[cache.hash_parts[2]]).store_path == items[2].path
        for wrong in ([], [unknown] * 65):
            with pytest.raises(ValueError):
                await client.narinfos(url, wrong)


async def test_an_answer_that_arrives_in_pieces_is_read_whole(seeded):
    """A narinfo list and a chunk table sent in pieces, with pauses between them (as a busy
    peer or a slow link delivers them), are taken whole, not cut at the first piece."""
    cache, _ = seeded
    async with peer_server(cache, "127.0.2.3") as honest, aiohttp.ClientSession() as session:

        async def in_pieces(request: web.Request) -> web.StreamResponse:
            async with session.get(honest + request.path) as upstream:
                body = await upstream.read()
                status = upstream.status
            response = web.StreamResponse(status=status)
            response.content_length = len(body)
            await response.prepare(request)
            for start in range(0, len(body), 700):
                await response.write(body[start : start + 700])
                await asyncio.sleep(0.01)
            return response

        app = web.Application()
        app.router.add_get("/{tail:.*}", in_pieces)
        async with app_server(app, "127.0.2.4") as slow:
            client = PeerClient(session)
            asked = list(cache.hash_parts)
            assert await client.narinfos(slow, asked) == await client.narinfos(honest, asked)
            h = cache.hash_parts[0]
            assert await client.chunk_table(slow, h) == await client.chunk_table(honest, h)


async def test_unreachable_peer_is_unavailable_not_misbehaving():
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session)
        with pytest.raises(PeerUnavailable):
            await client.narinfo("http://127.0.9.1:9", "0" * 32)


async def test_oversized_and_malformed_answers_count_against_the_peer():
    async def huge(request):
        return web.Response(body=b"x" * (200 * 1024))

    async def garbage_table(request):
        return web.Response(body=b"P2CT garbage")

    app = web.Application()
    app.router.add_get("/p2p/v1/narinfo/{h}", huge)
    app.router.add_get("/p2p/v1/node", huge)
    app.router.add_get("/p2p/v1/chunks/{h}", garbage_table)
    listener = AiohttpListener(app, "127.0.3.1", 0)
    await listener.start()
    url = f"http://127.0.3.1:{listener.port}"
    try:
        async with aiohttp.ClientSession() as session:
            client = PeerClient(session)
            with pytest.raises(PeerMisbehaved, match="bytes"):
                await client.narinfo(url, "0" * 32)
            with pytest.raises(PeerMisbehaved):
                await client.node_info(url)
            with pytest.raises(PeerMisbehaved):
                await client.chunk_table(url, "0" * 32)
    finally:
        await listener.stop()


@pytest.fixture
async def hostile_log_peer():
    """A peer whose log and attestation endpoints answer whatever the test puts in `answers`."""
    answers: dict[str, bytes] = {}

    async def answer(request):
        parts = request.path.split("/")  # "", "p2p", "v1", "attestations" or "log", ...
        return web.Response(body=answers[parts[3] if parts[3] != "log" else parts[4]])

    async def slow(request):
        await asyncio.sleep(5)
        return web.Response(body=b"")

    app = web.Application()
    app.router.add_get("/p2p/v1/attestations/{h}", answer)
    app.router.add_get("/p2p/v1/log/checkpoint", answer)
    app.router.add_get("/p2p/v1/log/inclusion/{i}/{s}", answer)
    app.router.add_get("/p2p/v1/log/consistency/{o}/{n}", slow)
    listener = AiohttpListener(app, "127.0.3.2", 0)
    await listener.start()
    try:
        yield f"http://127.0.3.2:{listener.port}", answers
    finally:
        await listener.stop()


def bundle_list_of(*bundles: bytes) -> bytes:
    return render_bundle_list(list(bundles))


async def test_malformed_or_oversized_trust_answers_count_against_the_peer(hostile_log_peer):
    url, answers = hostile_log_peer
    h = "0" * 32
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session)
        for body in (
            b"p2pcache-bundles/v1 2\n1\nx",  # a bundle short
            b"not a list at all",
            b"p2pcache-bundles/v1 1\n1\nx" + b" " * MAX_BUNDLE_LIST_SIZE,  # over 4 MiB
        ):
            answers["attestations"] = body
            with pytest.raises(PeerMisbehaved):
                await client.fetch_attestations(url, h)
        answers["attestations"] = bundle_list_of(b"first", b"second")
        assert await client.fetch_attestations(url, h) == [b"first", b"second"]
        for body in (b"garbage", b"origin\n5\nAAAA\n\n", b"x" * (MAX_CHECKPOINT_SIZE + 1)):
            answers["checkpoint"] = body
            with pytest.raises(PeerMisbehaved):
                await client.fetch_checkpoint(url)
        # Leaf 2 of 5 has a proof of 3 hashes: any other length is a lie about the tree.
        for body in (b"\0" * 64, b"\0" * 97, b"\0" * 128, b"\0" * (64 * 32 + 32)):
            answers["inclusion"] = body
            with pytest.raises(PeerMisbehaved):
                await client.fetch_inclusion_proof(url, 2, 5)
        answers["inclusion"] = b"\1" * 96
        assert await client.fetch_inclusion_proof(url, 2, 5) == [b"\1" * 32] * 3


async def test_a_slow_log_peer_is_unavailable_within_the_time_bound(hostile_log_peer):
    url, _ = hostile_log_peer
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session, PeerLimits(small_timeout=0.3))
        started = time.monotonic()
        with pytest.raises(PeerUnavailable, match="did not answer"):
            await client.fetch_consistency_proof(url, 3, 5)
        assert time.monotonic() - started < 2


async def test_proofs_that_cannot_exist_are_not_asked_for():
    async with aiohttp.ClientSession() as session:
        client = PeerClient(session)
        for index, size in ((5, 5), (-1, 3), (0, 0)):
            with pytest.raises(ValueError):
                await client.fetch_inclusion_proof("http://127.0.9.1:9", index, size)
        for old, new in ((0, 5), (5, 3)):
            with pytest.raises(ValueError):
                await client.fetch_consistency_proof("http://127.0.9.1:9", old, new)
