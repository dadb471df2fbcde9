"""The peer API over real sockets: what a client may fetch, and how bounded it is."""

import hashlib
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from p2pcache.cache.chunked_zstd import decompress_frame
from p2pcache.guix.narinfo import parse_narinfo, render_signature_line, render_signed_part
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.peer_client import PeerClient, PeerMisbehaved, PeerUnavailable
from p2pcache.server.admin_app import AiohttpListener
from p2pcache.trust.narinfo_acceptance import accept_relayed_narinfo
from tests.net.peer_servers import peer_server
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
        ):
            async with session.get(url + path) as response:
                assert response.status == 404, path
                assert len(await response.read()) < 100


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
