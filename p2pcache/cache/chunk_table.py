"""The chunk table of a NAR: a protocol format (protocol/chunks.md), pure bytes in, values out.

Every node cuts a NAR into the same chunks (CHUNK_SIZE bytes of the uncompressed NAR, the last
one shorter) and computes the same chunk root (RFC 6962 Merkle root over the chunks' SHA-256
digests), while each compresses the chunks as it likes: one independent zstd frame per chunk.
So the table holds, per chunk, the size of this node's frame (node-local) and the digest of the
uncompressed chunk (global). Peers ask for chunks by index, never by byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from p2pcache.errors import FormatError
from p2pcache.trust.merkle_hash import leaf_hash, root_from_leaf_hashes

CHUNK_SIZE = 1 << 20
"""Uncompressed bytes per chunk (1 MiB): a protocol constant, see protocol/chunks.md."""

MAGIC = b"P2CT"
VERSION = 1
_HEADER = struct.Struct(">4sB3xIQI")
_ENTRY = struct.Struct(">I32s")

# 2**16 chunks of 1 MiB is a 64 GiB NAR, far above any store item; the table is then 2.3 MiB.
MAX_CHUNKS = 1 << 16
# zstd's worst case for 1 MiB of incompressible input is about 1 MiB + 4 KiB; allow headroom.
MAX_FRAME_SIZE = CHUNK_SIZE + (64 << 10)


class ChunkTableError(FormatError):
    """A chunk table is malformed or inconsistent with what it describes."""


def chunk_count(nar_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a NAR of `nar_size` bytes has (a NAR is never empty)."""
    if nar_size <= 0:
        raise ChunkTableError("a NAR is never empty")
    return -(-nar_size // chunk_size)


def chunk_length(index: int, nar_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Uncompressed length of chunk `index` of a NAR of `nar_size` bytes."""
    count = chunk_count(nar_size, chunk_size)
    if not 0 <= index < count:
        raise ChunkTableError(f"chunk {index} does not exist in a table of {count}")
    return chunk_size if index < count - 1 else nar_size - chunk_size * (count - 1)


def chunk_root(digests: Sequence[bytes]) -> bytes:
    """The chunk root: RFC 6962 Merkle root whose leaves are the chunks' SHA-256 digests."""
    return root_from_leaf_hashes([leaf_hash(d) for d in digests])


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    offset: int
    """Byte offset of this chunk's frame in this node's compressed file."""
    frame_size: int
    length: int
    """Uncompressed length."""
    sha256: bytes


@dataclass(frozen=True)
class ChunkTable:
    """Frame sizes (node-local) and uncompressed digests (global) of one NAR's chunks."""

    nar_size: int
    frame_sizes: tuple[int, ...]
    digests: tuple[bytes, ...]
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        count = chunk_count(self.nar_size, self.chunk_size)
        if len(self.frame_sizes) != count or len(self.digests) != count:
            raise ChunkTableError(
                f"a {self.nar_size}-byte NAR has {count} chunks, the table lists "
                f"{len(self.frame_sizes)} frames and {len(self.digests)} digests"
            )
        if count > MAX_CHUNKS:
            raise ChunkTableError(f"{count} chunks is more than the {MAX_CHUNKS} allowed")
        for size in self.frame_sizes:
            if not 0 < size <= MAX_FRAME_SIZE:
                raise ChunkTableError(f"frame size {size} is out of range")
        for digest in self.digests:
            if len(digest) != 32:
                raise ChunkTableError("a chunk digest is 32 bytes")

    @property
    def count(self) -> int:
        return len(self.digests)

    @cached_property
    def file_size(self) -> int:
        """Size of the compressed file: what FileSize says for the zstd URL."""
        return sum(self.frame_sizes)

    @cached_property
    def root(self) -> bytes:
        return chunk_root(self.digests)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, position = [], 0
        for size in self.frame_sizes:
            out.append(position)
            position += size
        return tuple(out)

    def chunk(self, index: int) -> Chunk:
        if not 0 <= index < self.count:
            raise ChunkTableError(f"chunk {index} does not exist in a table of {self.count}")
        return Chunk(
            index,
            self.offsets[index],
            self.frame_sizes[index],
            chunk_length(index, self.nar_size, self.chunk_size),
            self.digests[index],
        )

    def __iter__(self) -> Iterator[Chunk]:
        return (self.chunk(i) for i in range(self.count))

    def encode(self) -> bytes:
        """The table's wire and index form (protocol/chunks.md)."""
        head = _HEADER.pack(MAGIC, VERSION, self.chunk_size, self.nar_size, self.count)
        body = b"".join(
            _ENTRY.pack(s, d) for s, d in zip(self.frame_sizes, self.digests, strict=True)
        )
        return head + body


def encoded_size(count: int) -> int:
    return _HEADER.size + _ENTRY.size * count


def decode_chunk_table(data: bytes) -> ChunkTable:
    """Parse an encoded chunk table; every inconsistency is a ChunkTableError."""
    if len(data) < _HEADER.size:
        raise ChunkTableError("chunk table is shorter than its header")
    magic, version, chunk_size, nar_size, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ChunkTableError("not a chunk table (bad magic)")
    if version != VERSION:
        raise ChunkTableError(f"chunk table version {version} is not supported")
    if chunk_size != CHUNK_SIZE:
        raise ChunkTableError(f"chunk size {chunk_size} is not the protocol's {CHUNK_SIZE}")
    if count > MAX_CHUNKS:
        raise ChunkTableError(f"{count} chunks is more than the {MAX_CHUNKS} allowed")
    if len(data) != encoded_size(count):
        raise ChunkTableError(f"chunk table of {count} chunks has the wrong length {len(data)}")
    if data[5:8] != b"\0\0\0":
        raise ChunkTableError("chunk table reserved bytes are not zero")
    entries = [_ENTRY.unpack_from(data, _HEADER.size + i * _ENTRY.size) for i in range(count)]
    return ChunkTable(
        nar_size=nar_size,
        frame_sizes=tuple(e[0] for e in entries),
        digests=tuple(e[1] for e in entries),
        chunk_size=chunk_size,
    )
