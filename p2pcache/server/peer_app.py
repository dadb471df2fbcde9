"""The peer API (protocol/peer-api.md): what other nodes fetch from this one, over aiohttp.

A node offers only what it holds in its cache: the signed narinfo part, the chunk table and
the compressed frames of baked items. Frames are read from the cached file in a worker thread
(pread) and written as they are read, so a large range never sits in memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from p2pcache import __version__
from p2pcache.cache.chunk_table import ChunkTable, decode_chunk_table
from p2pcache.cache.index import CacheIndex, IndexedItem
from p2pcache.cache.nar_store import NarStore, NarStoreError
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.node_info import sign_node_info

NARINFO_TYPE = "text/x-nix-narinfo"
CHUNK_TABLE_TYPE = "application/x-p2pcache-chunk-table"
READ_BLOCK = 1 << 20

_HASH = r"(?P<hash>[0-9a-df-np-sv-z]{32})"


def _not_found(what: str) -> web.Response:
    return web.Response(status=404, text=f"{what}\n")


class PeerAPI:
    """Handlers of `/p2p/v1/…` over a node's index and NAR files."""

    def __init__(
        self,
        index: CacheIndex,
        nar_store: NarStore,
        identity: NodeIdentity,
        peer_url: str,
        *,
        executor: Executor | None = None,
        on_served: Callable[[str, int], None] | None = None,
        sign_item: Callable[[IndexedItem], IndexedItem] | None = None,
    ) -> None:
        self.index = index
        self.nar_store = nar_store
        self.identity = identity
        self.peer_url = peer_url
        self.executor = executor
        self.on_served = on_served
        self.sign_item = sign_item
        self._tables: dict[str, tuple[bytes, ChunkTable]] = {}

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/p2p/v1/node", self.node)
        app.router.add_get("/p2p/v1/narinfo/{hash}", self.narinfo)
        app.router.add_get("/p2p/v1/chunks/{hash}", self.chunks)
        app.router.add_get("/p2p/v1/frames/{hash}/{first}/{count}", self.frames)
        return app

    def _baked(self, request: web.Request) -> IndexedItem | None:
        hash_part = request.match_info["hash"]
        if not re.fullmatch(_HASH, hash_part):
            return None
        item = self.index.get(hash_part)
        if item is None or not item.is_baked:
            return None
        if (item.signed_part is None or item.signature is None) and self.sign_item is not None:
            # Baked by `p2pcache publish` (which holds no key): the node vouches for its own
            # store items, signing them when first offered, as its Guix endpoint does.
            item = self.sign_item(item)
        if item.signed_part is None:
            return None
        return item

    def _table(self, item: IndexedItem) -> ChunkTable:
        """Decoded chunk tables are kept while their encoded bytes stay the same."""
        cached = self._tables.get(item.hash_part)
        if cached is not None and cached[0] == item.chunk_table:
            return cached[1]
        table = decode_chunk_table(item.chunk_table)
        if len(self._tables) > 1024:
            self._tables.clear()
        self._tables[item.hash_part] = (item.chunk_table, table)
        return table

    async def node(self, request: web.Request) -> web.Response:
        body = sign_node_info(
            self.identity, f"p2pcache {__version__}", self.peer_url, int(time.time())
        )
        return web.Response(body=body, content_type="application/json")

    async def narinfo(self, request: web.Request) -> web.Response:
        item = self._baked(request)
        if item is None or item.signature is None:
            return _not_found("no such item in this node's cache")
        return web.Response(body=item.signed_part + item.signature, content_type=NARINFO_TYPE)

    async def chunks(self, request: web.Request) -> web.Response:
        item = self._baked(request)
        if item is None:
            return _not_found("no such item in this node's cache")
        return web.Response(body=item.chunk_table, content_type=CHUNK_TABLE_TYPE)

    async def frames(self, request: web.Request) -> web.StreamResponse:
        item = self._baked(request)
        if item is None:
            return _not_found("no such item in this node's cache")
        try:
            first = int(request.match_info["first"])
            count = int(request.match_info["count"])
        except ValueError:
            return _not_found("bad chunk range")
        table = self._table(item)
        if first < 0 or count < 1 or first + count > table.count:
            return _not_found("bad chunk range")
        start = table.offsets[first]
        end = table.offsets[first + count - 1] + table.frame_sizes[first + count - 1]
        try:
            fd = self.nar_store.open(item.nar_file)
        except NarStoreError:
            return _not_found("no such item in this node's cache")
        loop = asyncio.get_running_loop()
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/zstd"})
            response.content_length = end - start
            await response.prepare(request)
            position = start
            while position < end:
                size = min(READ_BLOCK, end - position)
                block = await loop.run_in_executor(self.executor, os.pread, fd, size, position)
                if len(block) != size:
                    raise ConnectionResetError("cached NAR is shorter than its chunk table")
                await response.write(block)
                position += size
            await response.write_eof()
        finally:
            os.close(fd)
        if self.on_served is not None:
            self.on_served(item.hash_part, end - start)
        return response
