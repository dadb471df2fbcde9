"""PeerKeys over real sockets: a key is proven only by node information naming its own URL."""

from __future__ import annotations

import contextlib
import time

import aiohttp
from aiohttp import web

from p2pcache.net.identity import NodeIdentity
from p2pcache.net.node_info import sign_node_info
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_keys import PeerKeys
from p2pcache.server.admin_app import AiohttpListener


@contextlib.asynccontextmanager
async def node_info_server(identity: NodeIdentity, names: str | None = None):
    """Serves `identity`'s signed node information, naming `names` (default: its own URL)."""
    state = {"url": "", "asked": 0}

    async def node(request: web.Request) -> web.Response:
        state["asked"] += 1
        body = sign_node_info(identity, "test", names or state["url"], int(time.time()))
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/p2p/v1/node", node)
    listener = AiohttpListener(app, "127.0.0.1", 0)
    await listener.start()
    state["url"] = f"http://127.0.0.1:{listener.port}"
    try:
        yield state
    finally:
        await listener.stop()


async def test_a_node_naming_its_own_url_is_proven_and_remembered():
    identity = NodeIdentity.generate()
    async with node_info_server(identity) as server, aiohttp.ClientSession() as session:
        keys = PeerKeys(PeerClient(session))
        assert await keys.key_of(server["url"]) == identity.public_key
        assert await keys.key_of(server["url"] + "/") == identity.public_key
        assert keys.url_of(identity.public_key) == server["url"] + "/"
        await keys.key_of(server["url"])
        assert server["asked"] == 2  # one per URL spelling, then from memory


async def test_a_replayed_node_document_proves_nothing():
    builder = NodeIdentity.generate()
    replay = node_info_server(builder, names="http://127.0.0.9:1")
    async with replay as replayer, aiohttp.ClientSession() as session:
        keys = PeerKeys(PeerClient(session))
        assert await keys.key_of(replayer["url"]) is None
        assert keys.url_of(builder.public_key) is None


async def test_an_unreachable_peer_is_asked_again_later():
    async with aiohttp.ClientSession() as session:
        keys = PeerKeys(PeerClient(session))
        assert await keys.key_of("http://127.0.0.1:9") is None
        identity = NodeIdentity.generate()
        async with node_info_server(identity) as server:
            assert await keys.key_of(server["url"]) == identity.public_key


async def test_memory_is_bounded_oldest_first():
    identities = [NodeIdentity.generate() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(node_info_server(i)) for i in identities]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        keys = PeerKeys(PeerClient(session), max_peers=2)
        for server in servers:
            await keys.key_of(server["url"])
        assert keys.url_of(identities[0].public_key) is None
        assert [keys.url_of(i.public_key) for i in identities[1:]] == [
            s["url"] for s in servers[1:]
        ]
