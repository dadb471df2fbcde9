"""Client side of the peer API (protocol/peer-api.md): bounded reads, nothing believed unchecked.

Every call has a size bound and a time bound. Errors come in two kinds, because they mean
different things for ranking: `PeerUnavailable` (the peer could not be reached, timed out, or
does not have the item: try another, no blame) and `PeerMisbehaved` (the peer answered with
something malformed or oversized: try another and hold it against that peer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from p2pcache.cache.chunk_table import (
    MAX_CHUNKS,
    ChunkTable,
    ChunkTableError,
    decode_chunk_table,
    encoded_size,
)
from p2pcache.errors import P2PCacheError
from p2pcache.net.bounded_body import BodyTooLarge, read_bounded
from p2pcache.net.narinfo_list import (
    MAX_NARINFOS_PER_REQUEST,
    NarinfoListFormatError,
    narinfo_list_size,
    parse_narinfo_list,
)
from p2pcache.net.node_info import MAX_NODE_INFO_SIZE, NodeInfo, verify_node_info
from p2pcache.trust.bundle_list import (
    MAX_BUNDLE_LIST_SIZE,
    BundleListFormatError,
    parse_bundle_list,
)
from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE, parse_checkpoint
from p2pcache.trust.checkpoint_list import (
    MAX_CHECKPOINT_LIST_SIZE,
    CheckpointListFormatError,
    parse_checkpoint_list,
)
from p2pcache.trust.merkle_proof import (
    HASH_SIZE,
    MAX_PROOF_LENGTH,
    ProofError,
    consistency_proof_length,
    inclusion_proof_length,
)
from p2pcache.trust.signed_note import NoteFormatError, parse_note

MAX_PEER_NARINFO = 64 * 1024


class PeerError(P2PCacheError):
    """A peer did not give us what we asked for."""


class PeerUnavailable(PeerError):
    """The peer is unreachable, too slow, or does not hold the item (no blame)."""


class PeerMisbehaved(PeerError):
    """The peer sent something malformed, oversized or inconsistent (counts against it)."""


@dataclass(frozen=True)
class PeerLimits:
    connect_timeout: float = 5.0
    small_timeout: float = 5.0
    table_timeout: float = 10.0
    stall_timeout: float = 20.0
    """A frames response that delivers no byte for this long is abandoned."""
    bundles_timeout: float = 10.0
    """A list of attestation bundles is at most 4 MiB."""


def peer_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _proof_length(length: Callable[[int, int], int], first: int, second: int) -> int:
    """The number of hashes a proof for these parameters has; ValueError if there is none."""
    try:
        return length(first, second)
    except ProofError as e:
        raise ValueError(str(e)) from None


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, limits: PeerLimits | None = None) -> None:
        self.session = session
        self.limits = limits or PeerLimits()

    async def _small(self, url: str, limit: int, timeout: float) -> bytes | None:
        """GET a small document: None on 404, bytes otherwise (at most `limit`)."""
        try:
            async with asyncio.timeout(timeout):
                async with self.session.get(url, allow_redirects=False) as response:
                    if response.status == 404:
                        return None
                    if response.status != 200:
                        raise PeerUnavailable(f"{url} answered {response.status}")
                    declared = response.content_length
                    if declared is not None and declared > limit:
                        raise PeerMisbehaved(f"{url} announces {declared} bytes, over {limit}")
                    try:
                        return await read_bounded(response.content, limit)
                    except BodyTooLarge:
                        raise PeerMisbehaved(f"{url} sent more than {limit} bytes") from None
        except TimeoutError:
            raise PeerUnavailable(f"{url} did not answer within {timeout} s") from None
        except aiohttp.ClientError as e:
            raise PeerUnavailable(f"{url}: {e}") from None

    async def node_info(self, base: str) -> NodeInfo:
        url = peer_url(base, "/p2p/v1/node")
        data = await self._small(url, MAX_NODE_INFO_SIZE, self.limits.small_timeout)
        if data is None:
            raise PeerUnavailable(f"{url} has no node information")
        try:
            return verify_node_info(data)
        except P2PCacheError as e:
            raise PeerMisbehaved(f"{url}: {e}") from None

    async def narinfo(self, base: str, hash_part: str) -> bytes | None:
        url = peer_url(base, f"/p2p/v1/narinfo/{hash_part}")
        return await self._small(url, MAX_PEER_NARINFO, self.limits.small_timeout)

    async def narinfos(
        self, base: str, hash_parts: Sequence[str]
    ) -> dict[str, bytes | None] | None:
        """Several narinfos in one request (None: the peer does not answer narinfo lists,
        e.g. an older node; ask for each alone). Each is bounded as `narinfo` bounds one."""
        if not 1 <= len(hash_parts) <= MAX_NARINFOS_PER_REQUEST:
            raise ValueError(f"a narinfo list asks for 1 to {MAX_NARINFOS_PER_REQUEST} items")
        url = peer_url(base, "/p2p/v1/narinfos/" + ",".join(hash_parts))
        limit = narinfo_list_size(len(hash_parts), MAX_PEER_NARINFO)
        data = await self._small(url, limit, self.limits.small_timeout)
        if data is None:
            return None
        try:
            return parse_narinfo_list(data, hash_parts, MAX_PEER_NARINFO)
        except NarinfoListFormatError as e:
            raise PeerMisbehaved(f"{url}: {e}") from None

    async def chunk_table(self, base: str, hash_part: str) -> ChunkTable | None:
        url = peer_url(base, f"/p2p/v1/chunks/{hash_part}")
        data = await self._small(url, encoded_size(MAX_CHUNKS), self.limits.table_timeout)
        if data is None:
            return None
        try:
            return decode_chunk_table(data)
        except ChunkTableError as e:
            raise PeerMisbehaved(f"{url}: {e}") from None

    async def fetch_attestations(self, base: str, hash_part: str) -> list[bytes]:
        """The attestation bundles a peer holds for an item, each as bytes ([] if none).

        Only the list's framing is checked (bundle_list.py, at most 4 MiB and 32 bundles of at
        most MAX_BUNDLE_SIZE each); parsing and verifying each bundle is the caller's job.
        """
        url = peer_url(base, f"/p2p/v1/attestations/{hash_part}")
        data = await self._small(url, MAX_BUNDLE_LIST_SIZE, self.limits.bundles_timeout)
        if data is None:
            return []
        try:
            return parse_bundle_list(data)
        except BundleListFormatError as e:
            raise PeerMisbehaved(f"{url}: {e}") from None

    async def fetch_checkpoint(self, base: str) -> bytes | None:
        """The newest signed checkpoint of the peer's own builder log (None if it has none).

        Checked to be a well-formed checkpoint note (at most 64 KiB, no extension lines); whose
        it is and whether its signature verifies is for the caller (checkpoint.py).
        """
        return await self._checkpoint_note(peer_url(base, "/p2p/v1/log/checkpoint"))

    async def fetch_cosigned_checkpoint(self, base: str, builder_key: bytes) -> bytes | None:
        """The newest checkpoint of a builder's log that a witness cosigned (None if none).

        Checked to be a well-formed checkpoint note; whether it is the builder's and whether
        the witness's cosignature verifies is for the caller.
        """
        path = f"/p2p/v1/witness/cosignature/{builder_key.hex()}"
        return await self._checkpoint_note(peer_url(base, path))

    async def _checkpoint_note(self, url: str) -> bytes | None:
        """GET a checkpoint note: None on 404; a malformed one is misbehaviour."""
        data = await self._small(url, MAX_CHECKPOINT_SIZE, self.limits.small_timeout)
        if data is None:
            return None
        try:
            parse_checkpoint(parse_note(data, max_size=MAX_CHECKPOINT_SIZE).text)
        except NoteFormatError as e:
            raise PeerMisbehaved(f"{url}: not a checkpoint: {e}") from None
        return data

    async def fetch_checkpoint_list(self, base: str) -> list[bytes]:
        """The newest checkpoints a peer accepted per builder log (gossip), each as bytes.

        Only the list's framing is checked (checkpoint_list.py: at most 1 MiB, 256 notes);
        parsing and verifying each note is the caller's job. [] when the peer has none.
        """
        url = peer_url(base, "/p2p/v1/checkpoints")
        data = await self._small(url, MAX_CHECKPOINT_LIST_SIZE, self.limits.small_timeout)
        if data is None:
            return []
        try:
            return parse_checkpoint_list(data)
        except CheckpointListFormatError as e:
            raise PeerMisbehaved(f"{url}: {e}") from None

    async def fetch_inclusion_proof(self, base: str, index: int, size: int) -> list[bytes] | None:
        """The peer's inclusion proof of leaf `index` in its log's tree of `size` leaves.

        Requires 0 <= index < size (ValueError otherwise). None when the peer has no such tree.
        The proof has exactly the number of hashes RFC 9162 gives for (index, size), or the
        peer misbehaved; whether it leads to a checkpoint's root is for merkle_proof to say.
        """
        expected = _proof_length(inclusion_proof_length, index, size)
        url = peer_url(base, f"/p2p/v1/log/inclusion/{index}/{size}")
        return await self._proof(url, expected)

    async def fetch_consistency_proof(self, base: str, old: int, new: int) -> list[bytes] | None:
        """The peer's consistency proof from its log's tree of `old` leaves to `new`.

        Requires 0 < old <= new (ValueError otherwise). None when the peer cannot make it (a
        missing proof is not evidence of anything). A proof of the wrong length is misbehaviour;
        whether it verifies between two checkpoints is for merkle_proof to say.
        """
        expected = _proof_length(consistency_proof_length, old, new)
        url = peer_url(base, f"/p2p/v1/log/consistency/{old}/{new}")
        return await self._proof(url, expected)

    async def _proof(self, url: str, expected: int) -> list[bytes] | None:
        limit = MAX_PROOF_LENGTH * HASH_SIZE
        data = await self._small(url, limit, self.limits.small_timeout)
        if data is None:
            return None
        if len(data) != expected * HASH_SIZE:
            raise PeerMisbehaved(
                f"{url} sent {len(data)} bytes, not the {expected} hashes such a proof has"
            )
        return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]

    async def frames(
        self, base: str, hash_part: str, table: ChunkTable, first: int, count: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (chunk index, compressed frame) for chunks first … first+count-1, in order.

        `table` is this peer's own chunk table (frame sizes are per node). Frames are cut from
        the body by those sizes; checking them is the caller's job.
        """
        url = peer_url(base, f"/p2p/v1/frames/{hash_part}/{first}/{count}")
        sizes = table.frame_sizes[first : first + count]
        stall = self.limits.stall_timeout
        try:
            async with asyncio.timeout(self.limits.connect_timeout + stall):
                response = await self.session.get(url, allow_redirects=False)
            async with response:
                if response.status == 404:
                    raise PeerUnavailable(f"{url}: the peer no longer has these chunks")
                if response.status != 200:
                    raise PeerUnavailable(f"{url} answered {response.status}")
                if response.content_length not in (None, sum(sizes)):
                    raise PeerMisbehaved(f"{url} announces a body that is not the frames' size")
                for offset, size in enumerate(sizes):
                    async with asyncio.timeout(stall):
                        frame = await response.content.readexactly(size)
                    yield first + offset, frame
        except asyncio.IncompleteReadError:
            raise PeerUnavailable(f"{url}: the connection ended inside a frame") from None
        except TimeoutError:
            raise PeerUnavailable(f"{url}: no data for {stall} s") from None
        except aiohttp.ClientError as e:
            raise PeerUnavailable(f"{url}: {e}") from None
