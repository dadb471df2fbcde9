"""The peer API (protocol/peer-api.md): what other nodes fetch from this one, over aiohttp.

A node offers only what it holds in its cache: the signed narinfo part, the chunk table and
the compressed frames of baked items. Frames are read from the cached file in a worker thread
(pread) and written as they are read, so a large range never sits in memory.

It also offers what backs those items: the attestation bundles it holds for an item (its own,
made fresh against its newest checkpoint, and those it carries for other builders), and, as a
builder, its log's newest checkpoint and inclusion and consistency proofs computed from
storage (merkle_log.py: O(log n) reads). Log reads run in the executor (SQLite blocks).

And what keeps builders honest: the newest checkpoint the node accepted per builder log it
tracks (checkpoint gossip, trust/gossip.py), and, on a witness, the checkpoints it cosigned
(trust/witness.py).
"""

from __future__ import annotations

import asyncio
import logging
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
from p2pcache.net.narinfo_list import MAX_NARINFOS_PER_REQUEST, render_narinfo_list
from p2pcache.net.node_info import sign_node_info
from p2pcache.trust.attestation_bundle import MAX_BUNDLE_SIZE
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.bundle_list import (
    MAX_BUNDLE_LIST_SIZE,
    MAX_BUNDLES,
    bundle_list_size,
    render_bundle_list,
)
from p2pcache.trust.checkpoint import builder_origin
from p2pcache.trust.checkpoint_list import render_checkpoint_list
from p2pcache.trust.merkle_log import LogRangeError
from p2pcache.trust.witness import Witness

log = logging.getLogger(__name__)

NARINFO_TYPE = "text/x-nix-narinfo"
NARINFOS_TYPE = "application/x-p2pcache-narinfos"
CHUNK_TABLE_TYPE = "application/x-p2pcache-chunk-table"
CHECKPOINT_TYPE = "text/plain"
PROOF_TYPE = "application/x-p2pcache-proof"
BUNDLES_TYPE = "application/x-p2pcache-bundles"
CHECKPOINTS_TYPE = "application/x-p2pcache-checkpoints"
READ_BLOCK = 1 << 20

_HASH = r"(?P<hash>[0-9a-df-np-sv-z]{32})"
# A tree size or leaf index: decimal without sign or leading zeros, below 2**63 (19 digits).
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_KEY = re.compile(r"[0-9a-f]{64}")


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
        builder_log: BuilderLog | None = None,
        on_log_served: Callable[[str, int], None] | None = None,
        checkpoint_notes: Callable[[], list[bytes]] | None = None,
        witness: Witness | None = None,
    ) -> None:
        self.index = index
        self.nar_store = nar_store
        self.identity = identity
        self.peer_url = peer_url
        self.executor = executor
        self.on_served = on_served
        self.sign_item = sign_item
        self.builder_log = builder_log
        self.on_log_served = on_log_served
        """Called with (kind, count): attestations (bundles sent), checkpoint, inclusion,
        consistency."""
        self.checkpoint_notes = checkpoint_notes
        """The newest checkpoint notes accepted per builder log (gossip.newest_notes)."""
        self.witness = witness
        self._tables: dict[str, tuple[bytes, ChunkTable]] = {}

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/p2p/v1/node", self.node)
        app.router.add_get("/p2p/v1/narinfo/{hash}", self.narinfo)
        app.router.add_get("/p2p/v1/narinfos/{hashes}", self.narinfos)
        app.router.add_get("/p2p/v1/chunks/{hash}", self.chunks)
        app.router.add_get("/p2p/v1/frames/{hash}/{first}/{count}", self.frames)
        app.router.add_get("/p2p/v1/attestations/{hash}", self.attestations)
        app.router.add_get("/p2p/v1/log/checkpoint", self.checkpoint)
        app.router.add_get("/p2p/v1/log/inclusion/{index}/{size}", self.inclusion)
        app.router.add_get("/p2p/v1/log/consistency/{old}/{new}", self.consistency)
        app.router.add_get("/p2p/v1/checkpoints", self.checkpoints)
        app.router.add_get("/p2p/v1/witness/cosignature/{key}", self.cosignature)
        return app

    def _baked(self, request: web.Request) -> IndexedItem | None:
        return self._baked_item(request.match_info["hash"])

    def _baked_item(self, hash_part: str) -> IndexedItem | None:
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

    async def narinfos(self, request: web.Request) -> web.Response:
        """Several items' narinfos at once (net/narinfo_list.py), in the order asked."""
        hash_parts = request.match_info["hashes"].split(",")
        if (
            len(hash_parts) > MAX_NARINFOS_PER_REQUEST
            or len(set(hash_parts)) != len(hash_parts)
            or not all(re.fullmatch(_HASH, h) for h in hash_parts)
        ):
            return _not_found(
                f"a narinfo list is 1 to {MAX_NARINFOS_PER_REQUEST} distinct hash parts"
            )
        entries = []
        for hash_part in hash_parts:
            item = self._baked_item(hash_part)
            held = item is not None and item.signature is not None
            entries.append((hash_part, item.signed_part + item.signature if held else None))
        return web.Response(body=render_narinfo_list(entries), content_type=NARINFOS_TYPE)

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
                try:
                    await response.write(block)
                except ConnectionResetError:
                    # The peer went away (it had what it needed, or gave up): not an error of
                    # this node's, which aiohttp would log as one if it were raised.
                    log.debug("a peer left while sending chunks of %s", item.hash_part)
                    return response
                position += size
            await response.write_eof()
        finally:
            os.close(fd)
        if self.on_served is not None:
            self.on_served(item.hash_part, end - start)
        return response

    # -- attestations and the builder log ---------------------------------------------------

    def _served(self, kind: str, count: int = 1) -> None:
        if self.on_log_served is not None:
            self.on_log_served(kind, count)

    async def _in_executor(self, call: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, call, *args)

    async def attestations(self, request: web.Request) -> web.Response:
        hash_part = request.match_info["hash"]
        if self.builder_log is None or not re.fullmatch(_HASH, hash_part):
            return _not_found("no attestations for this item here")
        bundles = await self._in_executor(self._bundles_for, hash_part)
        if not bundles:
            return _not_found("no attestations for this item here")
        self._served("attestations", len(bundles))
        return web.Response(body=render_bundle_list(bundles), content_type=BUNDLES_TYPE)

    def _bundles_for(self, hash_part: str) -> list[bytes]:
        """Own bundle first, then carried ones, as many as fit the list's bounds."""
        assert self.builder_log is not None
        # Entries an `attest` run appended without signing (it was cut short) get signed now.
        own = self.builder_log.own_bundle(hash_part, self.builder_log.checkpoint())
        candidates = ([own] if own is not None else []) + self.builder_log.bundles.carried(
            hash_part
        )
        chosen: list[bytes] = []
        for bundle in candidates:
            if len(chosen) == MAX_BUNDLES:
                break
            sizes = [len(b) for b in chosen] + [len(bundle)]
            if len(bundle) <= MAX_BUNDLE_SIZE and bundle_list_size(sizes) <= MAX_BUNDLE_LIST_SIZE:
                chosen.append(bundle)
        return chosen

    async def checkpoint(self, request: web.Request) -> web.Response:
        if self.builder_log is None:
            return _not_found("this node keeps no builder log")
        signed = await self._in_executor(self.builder_log.checkpoint)
        if signed is None:
            return _not_found("this node's builder log is empty")
        self._served("checkpoint")
        return web.Response(body=signed.note, content_type=CHECKPOINT_TYPE)

    async def inclusion(self, request: web.Request) -> web.Response:
        numbers = _decimals(request, "index", "size")
        if self.builder_log is None or numbers is None:
            return _not_found("bad proof parameters")
        return await self._proof("inclusion", self.builder_log.inclusion_proof, *numbers)

    async def consistency(self, request: web.Request) -> web.Response:
        numbers = _decimals(request, "old", "new")
        if self.builder_log is None or numbers is None:
            return _not_found("bad proof parameters")
        return await self._proof("consistency", self.builder_log.consistency_proof, *numbers)

    async def _proof(self, kind: str, make: Callable, first: int, second: int) -> web.Response:
        try:
            proof = await self._in_executor(make, first, second)
        except LogRangeError:
            return _not_found(f"no such {kind} proof in this node's log")
        self._served(kind)
        return web.Response(body=b"".join(proof), content_type=PROOF_TYPE)

    # -- checkpoint gossip and the witness ---------------------------------------------------

    async def checkpoints(self, request: web.Request) -> web.Response:
        if self.checkpoint_notes is None:
            return _not_found("this node passes on no checkpoints")
        # One indexed read of at most 256 rows: no dearer than any other log route.
        notes = await self._in_executor(self.checkpoint_notes)
        if not notes:
            return _not_found("this node has accepted no checkpoint yet")
        return web.Response(body=render_checkpoint_list(notes), content_type=CHECKPOINTS_TYPE)

    async def cosignature(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if self.witness is None or not _KEY.fullmatch(key):
            return _not_found("this node witnesses no such log")
        origin = builder_origin(bytes.fromhex(key))
        note = await self._in_executor(self.witness.cosigned, origin)
        if note is None:
            return _not_found("this witness has cosigned no checkpoint of that log")
        return web.Response(body=note, content_type=CHECKPOINT_TYPE)


def _decimals(request: web.Request, *names: str) -> tuple[int, ...] | None:
    texts = [request.match_info[name] for name in names]
    if not all(_DECIMAL.fullmatch(text) for text in texts):
        return None
    return tuple(int(text) for text in texts)
