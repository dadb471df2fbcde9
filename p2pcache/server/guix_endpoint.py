"""The Guix substitute endpoint: what `guix substitute` asks for, answered from the cache.

Routes (spec §1.1): `/nix-cache-info`, `/<hash>.narinfo`, `/nar/zstd/<basename>`,
`/nar/<basename>`, `/signing-key.pub`, `/` — GET and HEAD (HEAD is answered properly, a
deliberate difference from `guix publish`). Everything else is a 404 with a short body.

The hit path is synchronous and cheap: a hot narinfo is a pre-rendered response in a bounded
in-memory table; any other servable one is one pread from the rendered narinfos (a file of
every answer, rendered: cache/rendered_narinfos.py); one not there yet is one indexed SQLite
read plus appending the URL groups to the signed part stored in the index, then kept in the
rendered narinfos. All are offered to the HTTP server as its FastAnswer, by raw
request target, before any Request object exists. Only misses return an awaitable (the
resolver may look in the Guix database now, and in the peer network later), so pipelined
misses run concurrently while the server keeps the answers in order. Pre-rendered answers
never outlive a change: the node calls `forget` when an item is baked, evicted or refused,
and the index's change log, read through the rendered narinfos, tells of changes made by
other processes (`forget_hot`).

NARs: cached ones are sent from their file (zstd) or decompressed (none); a store item not
baked yet is read from the store and checked on the way; an accepted item from peers or
upstream is brought in while it is sent, its head held until the first piece is there (502
if none comes, so that Guix tries the narinfo's next URL). A NAR of an item the index does not
know is looked up as a miss first: Guix may hold a narinfo the node has forgotten since.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from p2pcache.cache.access_log import AccessLog
from p2pcache.cache.chunk_table import decode_chunk_table
from p2pcache.cache.index import (
    CacheIndex,
    IndexedItem,
    NarinfoFields,
    Origin,
    ServableNarinfo,
    State,
)
from p2pcache.cache.nar_store import NarStore, NarStoreError
from p2pcache.cache.rendered_narinfos import RenderedNarinfos
from p2pcache.errors import LookupUndecided, P2PCacheError
from p2pcache.guix.nar import NarHasher, iter_nar
from p2pcache.guix.narinfo import render_own_url_groups
from p2pcache.metrics import NodeMetrics
from p2pcache.server.http_response import (
    AnyResponse,
    FastReply,
    FileResponse,
    RawResponse,
    Response,
    StreamResponse,
    render_head,
)
from p2pcache.server.streaming import first_piece, iterate_in_thread

log = logging.getLogger(__name__)

NARINFO_TYPE = "application/x-nix-narinfo"
NAR_TYPE = "application/x-nix-archive"
ZSTD_TYPE = "application/zstd"

_NIX32 = "0-9a-df-np-sv-z"
_NARINFO_PATH = re.compile(rf"/([{_NIX32}]{{32}})\.narinfo\Z")
_NARINFO_TARGET = re.compile(rf"/([{_NIX32}]{{32}})\.narinfo\Z".encode())
_NAR_PATH = re.compile(rf"/nar/(?:(zstd)/)?([{_NIX32}]{{32}})-([A-Za-z0-9+\-._?=]{{1,211}})\Z")

Resolver = Callable[[str], Awaitable[IndexedItem | None]]

HOT_ADMISSION_ONE_IN = 8
"""One narinfo answered from the index in this many enters the pre-rendered table."""

# State values as stored (plain strings compare faster than through the enum).
_BAKED, _CORRUPT = State.BAKED.value, State.CORRUPT.value


class StoreItemChanged(P2PCacheError):
    """A store item did not hash to its recorded NarHash while being streamed."""


@dataclass(frozen=True)
class EndpointSettings:
    store_dir: str
    store_root: Path
    narinfo_ttl: int
    negative_ttl: int
    hot_narinfos: int
    undecided_ttl: int = 0


def _narinfo_200(answer: bytes) -> RawResponse:
    """A rendered narinfo answer (`render_servable`) as a response that HEAD can cut short."""
    return RawResponse(answer, answer.index(b"\r\n\r\n") + 4, 200, "narinfo")


class GuixEndpoint:
    """The request handler of the Guix substitute endpoint."""

    def __init__(
        self,
        settings: EndpointSettings,
        index: CacheIndex,
        nar_store: NarStore,
        public_key: bytes,
        sign_item: Callable[[IndexedItem], IndexedItem],
        metrics: NodeMetrics,
        *,
        resolve_miss: Resolver | None = None,
        on_unbaked_served: Callable[[IndexedItem], None] | None = None,
        on_corrupt: Callable[[IndexedItem], None] | None = None,
        on_missing_file: Callable[[IndexedItem], None] | None = None,
        on_left_store: Callable[[IndexedItem], None] | None = None,
        remote_stream: Callable[[IndexedItem], AsyncIterator[bytes]] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.nar_store = nar_store
        self.sign_item = sign_item
        self.metrics = metrics
        self.resolve_miss = resolve_miss
        self.on_unbaked_served = on_unbaked_served
        self.on_corrupt = on_corrupt
        self.on_left_store = on_left_store
        """Told of a store item not baked whose files are gone (`guix gc`): the node forgets it."""
        self.on_missing_file = on_missing_file
        self.remote_stream = remote_stream
        self.executor = executor
        # Every servable narinfo, rendered (see RenderedNarinfos); set by the node.
        self.rendered: RenderedNarinfos | None = None
        # Pre-rendered narinfos by request target (b"/<hash>.narinfo"), oldest first. Bytes,
        # so that the server's fast path can look a target up before it makes a Request.
        self._hot: OrderedDict[bytes, RawResponse] = OrderedDict()
        self._answers_until_admission = 1  # the first answer from the index is admitted
        self.accessed = AccessLog()
        self._lookups = metrics.narinfo_lookups
        ttl = settings.narinfo_ttl
        self._narinfo_headers = (("Cache-Control", f"max-age={ttl}"),)
        # The head of every narinfo 200, as render_head writes it, with a slot for the length:
        # a miss renders its response with one %-format instead of validating headers anew.
        self._narinfo_head = render_head(200, 0, NARINFO_TYPE, self._narinfo_headers).replace(
            b"Content-Length: 0\r\n", b"Content-Length: %d\r\n"
        )
        self._not_found_narinfo = Response(
            404,
            b"No such store item.\n",
            headers=(("Cache-Control", f"max-age={settings.negative_ttl}"),),
            label="narinfo",
        ).prerender()
        # A 404 that only says the lookup could not finish (it timed out, or no source could
        # tell): Guix caches a 404 for its max-age, so this one gets its own, short, one.
        self._undecided_narinfo = Response(
            404,
            b"No such store item found in time; ask again later.\n",
            headers=(("Cache-Control", f"max-age={settings.undecided_ttl}"),),
            label="narinfo",
        ).prerender()
        self._not_found = Response(404, b"Resource not found.\n", label="other").prerender()
        self._bad_gateway = Response(
            502, b"This NAR cannot be brought in now; try again later.\n", label="nar"
        ).prerender()
        self._cache_info = Response(
            200,
            f"StoreDir: {settings.store_dir}\nWantMassQuery: 0\nPriority: 100\n".encode(),
            content_type="text/plain",
            label="nix-cache-info",
        ).prerender()
        self._signing_key = Response(
            200,
            public_key,
            content_type="text/plain; charset=UTF-8",
            label="signing-key",
        ).prerender()
        self._home = Response(
            200,
            b"This is a p2pcache node: a Guix substitute server.\n"
            b"Add its URL to guix-daemon's --substitute-urls and authorize /signing-key.pub.\n",
            label="home",
        ).prerender()

    # -- dispatch -----------------------------------------------------------------------------

    def fast_answer(self, target: bytes) -> RawResponse | FastReply | None:
        """The server's FastAnswer: a narinfo hit by raw request target, or None.

        A pre-rendered narinfo, else a signed item read from the index; everything else (a
        miss, an item to sign, a corrupt one, any other route) is None, and the handler then
        answers the request as usual (and counts the miss).
        """
        hot = self._hot.get(target)
        if hot is not None:
            self._lookups.hits += 1
            return hot
        match = _NARINFO_TARGET.match(target)
        if match is None:
            return None
        hash_part = match.group(1).decode()
        rendered = self.rendered
        data = None if rendered is None else rendered.get(hash_part)
        if data is None:
            found = self.index.servable_narinfo_in_snapshot(hash_part)
            if found is None:
                return None
            data = self.render_servable(found)
            if rendered is not None:
                rendered.add(hash_part, data)
        self._lookups.hits += 1
        if self._admit():
            response = _narinfo_200(data)
            self.remember(hash_part, response)
            return response
        return FastReply(data, 200, "narinfo")

    def render_servable(self, found: ServableNarinfo) -> bytes:
        """The whole 200 answer (head and narinfo) for a servable item; also what the
        rendered narinfos keep, built in their worker thread (so: no state touched)."""
        body = found.signed + render_own_url_groups(found.basename, found.nar_size, found.zstd_size)
        return self._narinfo_head % len(body) + body

    def handle(self, request) -> AnyResponse | Awaitable[AnyResponse]:
        path: str = request.path
        hot = self._hot.get(path.encode())
        if hot is not None:
            # The hot path: a pre-rendered narinfo, found by its request path.
            self._lookups.hits += 1
            return hot
        if path.endswith(".narinfo"):
            match = _NARINFO_PATH.match(path)
            if match is None:
                return self._not_found_narinfo
            return self.narinfo(match.group(1))
        if path.startswith("/nar/"):
            match = _NAR_PATH.match(path)
            if match is None:
                return self._not_found
            return self.nar(
                match.group(2),
                match.group(3),
                compressed=bool(match.group(1)),
                head=request.method == "HEAD",
            )
        if path == "/nix-cache-info":
            return self._cache_info
        if path == "/signing-key.pub":
            return self._signing_key
        if path in ("/", "/index.html"):
            return self._home
        return self._not_found

    # -- narinfo ------------------------------------------------------------------------------

    def narinfo(self, hash_part: str) -> AnyResponse | Awaitable[AnyResponse]:
        fields = self.index.narinfo_fields(hash_part)
        if fields is not None and fields.state != _CORRUPT:
            if fields.signed_part is not None and fields.signature is not None:
                self._lookups.hits += 1
                return self._render_narinfo(fields, remember=self._admit())
            item = self.index.get(hash_part)  # rare: an item this node has not signed yet
            if item is not None and item.state is not State.CORRUPT:
                self._lookups.hits += 1
                return self._narinfo_response(item)
            fields = None if item is None else fields
        self._lookups.misses += 1
        if self.resolve_miss is None or fields is not None:  # unknown, or known corrupt
            return self._not_found_narinfo
        return self._resolve(hash_part)

    async def _resolve(self, hash_part: str) -> AnyResponse:
        assert self.resolve_miss is not None
        try:
            item = await self.resolve_miss(hash_part)
        except LookupUndecided:
            return self._undecided_narinfo  # counted in the miss metrics already
        except P2PCacheError as e:
            log.warning("could not look up %s: %s", hash_part, e)
            return self._undecided_narinfo
        if item is None or item.state is State.CORRUPT:
            return self._not_found_narinfo
        return self._narinfo_response(item)

    def _narinfo_response(self, item: IndexedItem) -> RawResponse:
        if item.signed_part is None or item.signature is None:
            item = self.sign_item(item)
        assert item.signed_part is not None and item.signature is not None
        fields = NarinfoFields(
            item.hash_part,
            item.store_path,
            item.nar_size,
            item.state,
            item.nar_file,
            item.file_size,
            item.signed_part,
            item.signature,
        )
        # An item just signed or fetched is likely to be asked for again soon (Guix asks
        # for the narinfo, then others on the same machine do): always remembered.
        return self._render_narinfo(fields, remember=True)

    def _render_narinfo(self, fields: NarinfoFields, *, remember: bool) -> RawResponse:
        """The 200 for a signed item, remembered as hot if asked."""
        baked = fields.state == _BAKED and fields.nar_file is not None
        servable = ServableNarinfo(
            fields.hash_part,
            fields.signed_part + fields.signature,  # type: ignore[operator]
            fields.store_path.rsplit("/", 1)[-1],
            fields.nar_size,
            fields.file_size if baked else None,
        )
        response = _narinfo_200(self.render_servable(servable))
        if remember:
            self.remember(fields.hash_part, response)
        return response

    def _admit(self) -> bool:
        """Whether this answer from the index should enter the pre-rendered table: one in
        HOT_ADMISSION_ONE_IN.

        Sampling keeps one-off lookups (a client scanning many items, or a million items asked
        at random) from flushing the table: an item asked often gets in after a handful of
        answers, and an item asked once almost never does. Remembering every answer cost
        about a fifth of the request on random keys over a million items (building the
        response object, inserting it, dropping the oldest; py-spy, 2026-11-25).
        """
        self._answers_until_admission -= 1
        if self._answers_until_admission > 0:
            return False
        self._answers_until_admission = HOT_ADMISSION_ONE_IN
        return True

    def remember(self, hash_part: str, response: RawResponse) -> None:
        if self.settings.hot_narinfos <= 0:
            return
        hot = self._hot
        if len(hot) >= self.settings.hot_narinfos:
            # Drop the oldest entry: a cheap FIFO bound. (An OrderedDict, because deleting the
            # first key of a plain dict again and again makes finding the first key slow.)
            hot.popitem(last=False)
        hot[b"/%s.narinfo" % hash_part.encode()] = response

    def forget_hot(self, hash_part: str | None) -> None:
        """Drop one pre-rendered narinfo, or all of them (None): the index's change log says
        it changed, perhaps by another process."""
        if hash_part is None:
            self._hot.clear()
        else:
            self._hot.pop(b"/%s.narinfo" % hash_part.encode(), None)

    def forget(self, hash_part: str) -> None:
        """Drop a pre-rendered narinfo (the item was baked, evicted or found corrupt), and
        the index's shared snapshot, so that the next answer is rendered from the change."""
        self._hot.pop(b"/%s.narinfo" % hash_part.encode(), None)
        self.index.end_snapshot()
        if self.rendered is not None:
            self.rendered.drop(hash_part)

    # -- NARs ---------------------------------------------------------------------------------

    def nar(
        self, hash_part: str, name: str, *, compressed: bool, head: bool = False
    ) -> AnyResponse | Awaitable[AnyResponse]:
        """A NAR, or for `head` (a HEAD request) what its GET would say, without fetching
        anything from elsewhere."""
        item = self.index.get(hash_part)
        if item is None and not compressed and self.resolve_miss is not None:
            return self._resolve_nar(hash_part, name, head)
        return self._nar_of(item, hash_part, name, compressed=compressed, head=head)

    def _nar_of(
        self,
        item: IndexedItem | None,
        hash_part: str,
        name: str,
        *,
        compressed: bool,
        head: bool = False,
    ) -> AnyResponse | Awaitable[AnyResponse]:
        if item is None or item.state is State.CORRUPT or item.basename != f"{hash_part}-{name}":
            return self._not_found
        self.accessed.record(hash_part)
        if item.is_baked:
            try:
                if compressed:
                    return self._cached_file(item)
                return self._decompressed(item)
            except NarStoreError as e:
                log.error("%s; forgetting that it was cached", e)
                self.forget(hash_part)
                if self.on_missing_file is not None:
                    self.on_missing_file(item)
                return self._not_found
        if compressed:
            return self._not_found
        if item.origin is Origin.STORE:
            root = self.settings.store_root
            if not os.path.lexists(root / item.basename) and _has_entries(root):
                # Collected as garbage since it was published: a 404 now, so that Guix tries
                # its next URL, and forgotten, so that the next narinfo request is a miss.
                # (Not when the whole store is missing: a mount that is not there yet.)
                log.warning("%s is no longer in the store; forgetting it", item.store_path)
                self.forget(hash_part)
                if self.on_left_store is not None:
                    self.on_left_store(item)
                return self._not_found
            return self._from_store(item)
        if self.remote_stream is None:
            return self._not_found
        if head:
            # The head of the GET that would fetch it; the stream is never started.
            return self._remote_response(item, self.remote_stream(item))
        return self._from_remote(item)

    async def _resolve_nar(self, hash_part: str, name: str, head: bool) -> AnyResponse:
        """The NAR of an item the index does not know. Guix keeps a narinfo for its max-age
        and asks for the NAR when it builds, maybe after this node forgot the item (its
        promise expired, its NAR was evicted, its data directory was reset). So the item is
        looked up as a narinfo miss would be, and if it is accepted under the same name its
        NAR is sent: Guix checks it against the NarHash of the narinfo it holds."""
        assert self.resolve_miss is not None
        try:
            item = await self.resolve_miss(hash_part)
        except P2PCacheError as e:
            log.info("the NAR of %s-%s is not to be found now: %s", hash_part, name, e)
            return self._not_found
        answer = self._nar_of(item, hash_part, name, compressed=False, head=head)
        return await answer if inspect.isawaitable(answer) else answer

    async def _from_remote(self, item: IndexedItem) -> AnyResponse:
        """An accepted item not cached yet: fetched from peers or upstream while it is sent.

        The head waits for the first piece: a NAR that cannot be brought in at all (no
        provider answers, the upstream lost it) is a 502, on which Guix tries the narinfo's
        next URL at once, instead of a 200 cut short, which it would retry first."""
        assert self.remote_stream is not None
        try:
            first, pieces = await first_piece(self.remote_stream(item))
        except P2PCacheError as e:
            log.warning("could not bring in the NAR of %s: %s", item.store_path, e)
            return self._bad_gateway
        if first is None:
            return self._bad_gateway  # a source that ended at once: nothing to send
        return self._remote_response(item, pieces)

    def _remote_response(self, item: IndexedItem, pieces: AsyncIterator[bytes]) -> StreamResponse:
        self.metrics.nar_bytes_served.inc(("none",), item.nar_size)
        return StreamResponse(pieces, item.nar_size, NAR_TYPE, self._nar_headers(), label="nar")

    def _cached_file(self, item: IndexedItem) -> FileResponse:
        fd = self.nar_store.open(item.nar_file)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        if size != item.file_size:
            os.close(fd)
            raise NarStoreError(f"cached NAR {item.nar_file} has the wrong size")
        self.metrics.nar_bytes_served.inc(("zstd",), size)
        return FileResponse(fd, 0, size, ZSTD_TYPE, self._nar_headers(), label="nar")

    def _decompressed(self, item: IndexedItem) -> StreamResponse:
        assert item.nar_file is not None and item.chunk_table is not None
        pieces = self.nar_store.read_nar(item.nar_file, decode_chunk_table(item.chunk_table))
        self.metrics.nar_bytes_served.inc(("none",), item.nar_size)
        return StreamResponse(
            iterate_in_thread(lambda: pieces, self.executor),
            item.nar_size,
            NAR_TYPE,
            self._nar_headers(),
            label="nar",
        )

    def _from_store(self, item: IndexedItem) -> StreamResponse:
        """Stream an unbaked store item, checking it against the daemon's NarHash on the way.

        The last piece is held back until the whole NAR has hashed correctly, so a client
        never receives a complete-looking body whose hash is wrong: on a mismatch the stream
        fails, the server aborts the connection, and the item is marked corrupt.
        """
        source = self.settings.store_root / item.basename
        expected = item.nar_hash

        def chunks() -> Iterator[bytes]:
            hasher = NarHasher()
            held: bytes | None = None
            produced = 0
            for piece in iter_nar(source):
                hasher.update(piece)
                produced += len(piece)
                if produced > item.nar_size:
                    break
                if held is not None:
                    yield held
                held = bytes(piece)
            summary = hasher.summary()
            if summary.nar_hash != expected or summary.size != item.nar_size:
                raise StoreItemChanged(
                    f"{source} hashes to {summary.nar_hash} ({summary.size} bytes), the Guix "
                    f"database says {expected} ({item.nar_size} bytes)"
                )
            if held is not None:
                yield held

        async def guarded() -> AsyncIterator[bytes]:
            try:
                async for piece in iterate_in_thread(chunks, self.executor):
                    yield piece
            except StoreItemChanged as e:
                log.error("refusing corrupt store item: %s", e)
                self.forget(item.hash_part)
                if self.on_corrupt is not None:
                    self.on_corrupt(item)
                raise
            except (P2PCacheError, OSError) as e:
                log.error("could not read store item %s: %s", source, e)
                raise

        if self.on_unbaked_served is not None:
            self.on_unbaked_served(item)
        self.metrics.nar_bytes_served.inc(("none",), item.nar_size)
        return StreamResponse(guarded(), item.nar_size, NAR_TYPE, self._nar_headers(), label="nar")

    def _nar_headers(self) -> tuple[tuple[str, str], ...]:
        return (("Cache-Control", f"max-age={self.settings.narinfo_ttl}"),)


def _has_entries(directory: Path) -> bool:
    """Whether `directory` exists and holds anything (reads its first entry only)."""
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return False
