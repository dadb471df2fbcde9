"""Real peer API servers on loopback for tests, honest and otherwise."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from p2pcache.cache.index import CacheIndex, IndexedItem
from p2pcache.cache.nar_store import NarStore
from p2pcache.net.identity import NodeIdentity
from p2pcache.server.admin_app import AiohttpListener
from p2pcache.server.peer_app import PeerAPI
from p2pcache.trust.builder_log import BuilderLog
from tests.seeded_cache import SeededCache


def _range(api: PeerAPI, request: web.Request) -> tuple[bytes, list[int], int]:
    item = api._baked(request)
    table = api._table(item)
    first, count = int(request.match_info["first"]), int(request.match_info["count"])
    start = table.offsets[first]
    end = table.offsets[first + count - 1] + table.frame_sizes[first + count - 1]
    blob = api.nar_store.path_of(item.nar_file).read_bytes()[start:end]
    return blob, [o - start for o in table.offsets[first : first + count]], first


class CorruptingPeerAPI(PeerAPI):
    """Flips a byte inside every frame it sends (wrong bytes, right lengths)."""

    async def frames(self, request: web.Request) -> web.StreamResponse:
        blob, starts, _ = _range(self, request)
        data = bytearray(blob)
        for start in starts:
            data[start + 20] ^= 0xFF
        return web.Response(body=bytes(data), content_type="application/zstd")


class CorruptingFromPeerAPI(PeerAPI):
    """Sends chunks before `bad_from` intact and flips a byte in every later frame."""

    bad_from = 3

    async def frames(self, request: web.Request) -> web.StreamResponse:
        blob, starts, first = _range(self, request)
        data = bytearray(blob)
        for offset, start in enumerate(starts):
            if first + offset >= self.bad_from:
                data[start + 20] ^= 0xFF
        return web.Response(body=bytes(data), content_type="application/zstd")


class DyingPeerAPI(PeerAPI):
    """Sends the frames of the first `good` chunks of a range and a bit more, then hangs up."""

    good = 2

    async def frames(self, request: web.Request) -> web.StreamResponse:
        blob, starts, _ = _range(self, request)
        cut = starts[self.good] + 10 if len(starts) > self.good else len(blob) // 2
        response = web.StreamResponse(headers={"Content-Type": "application/zstd"})
        response.content_length = len(blob)
        await response.prepare(request)
        await response.write(blob[:cut])
        request.transport.close()
        return response


@contextlib.asynccontextmanager
async def app_server(app: web.Application, host: str) -> AsyncIterator[str]:
    """Any aiohttp application (a hand-made peer, old or hostile) on loopback; yields its URL."""
    listener = AiohttpListener(app, host, 0)
    await listener.start()
    try:
        yield f"http://{host}:{listener.port}"
    finally:
        await listener.stop()


@contextlib.asynccontextmanager
async def peer_server(
    cache: SeededCache,
    host: str = "127.0.0.1",
    api_class: type[PeerAPI] = PeerAPI,
    sign_item: Callable[[IndexedItem], IndexedItem] | None = None,
) -> AsyncIterator[str]:
    api = api_class(cache.index, cache.nar_store, NodeIdentity.generate(), "", sign_item=sign_item)
    listener = AiohttpListener(api.application(), host, 0)
    await listener.start()
    url = f"http://{host}:{listener.port}"
    api.peer_url = url
    try:
        yield url
    finally:
        await listener.stop()


@contextlib.asynccontextmanager
async def builder_server(
    tmp_path, builder_log: BuilderLog | None, host: str = "127.0.0.1", **api_options
) -> AsyncIterator[tuple[str, Counter]]:
    """A peer API over an empty cache and `builder_log` (and other PeerAPI options, such as a
    witness); yields its URL and what it served."""
    served: Counter = Counter()
    index = CacheIndex(tmp_path / "peer-index.sqlite")
    await index.open()
    api = PeerAPI(
        index,
        NarStore(tmp_path / "peer-nar"),
        NodeIdentity.generate(),
        "",
        builder_log=builder_log,
        on_log_served=lambda kind, count: served.update({kind: count}),
        **api_options,
    )
    listener = AiohttpListener(api.application(), host, 0)
    await listener.start()
    try:
        yield f"http://{host}:{listener.port}", served
    finally:
        await listener.stop()
        await index.close()
