"""Chunked zstd: a NAR as a sequence of independent zstd frames, one per protocol chunk.

To Guix the file is one ordinary zstd stream (decoders read concatenated frames as one), sent
with sendfile and never recompressed; to peers it is a list of frames that can be fetched,
checked and resumed chunk by chunk, from different providers. Compression runs on a thread
pool (zstd and hashlib release the GIL), so baking uses every core.

Frames written here carry their content size and a checksum; frames received from peers must
carry their content size (protocol/chunks.md), which bounds decompression before it starts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from typing import BinaryIO

import zstandard

from p2pcache.cache.chunk_table import CHUNK_SIZE, MAX_FRAME_SIZE, ChunkTable, ChunkTableError
from p2pcache.guix.nar import NarHasher, NarSummary


class ChunkVerificationError(ChunkTableError):
    """A frame does not decompress to the chunk its table describes."""


def compress_chunk(compressor: zstandard.ZstdCompressor, chunk: bytes) -> tuple[bytes, bytes]:
    """One frame and the uncompressed chunk's SHA-256 (both release the GIL)."""
    return compressor.compress(chunk), hashlib.sha256(chunk).digest()


def decompress_frame(frame: bytes, expected_length: int, expected_sha256: bytes | None) -> bytes:
    """Decompress one frame that must hold exactly one chunk of `expected_length` bytes.

    The declared content size is checked before decompressing, so a hostile frame cannot make
    us inflate more than one chunk; trailing bytes after the frame are refused.
    """
    if not 0 < len(frame) <= MAX_FRAME_SIZE:
        raise ChunkVerificationError(f"frame of {len(frame)} bytes is out of range")
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise ChunkVerificationError(f"not a zstd frame: {e}") from None
    if declared != expected_length:
        raise ChunkVerificationError(
            f"frame declares {declared} bytes, the chunk has {expected_length}"
        )
    # One-shot: the declared size (checked above) sizes the output, decoded in one call; a
    # streaming decompressobj copied it through its buffers, 20-35 % slower per frame.
    try:
        data = zstandard.ZstdDecompressor().decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise ChunkVerificationError(
            f"corrupt zstd frame, truncated or followed by extra bytes: {e}"
        ) from None
    if len(data) != expected_length:
        raise ChunkVerificationError("frame is truncated or followed by extra bytes")
    if expected_sha256 is not None and hashlib.sha256(data).digest() != expected_sha256:
        raise ChunkVerificationError("chunk does not match its SHA-256 in the chunk table")
    return data


class ChunkedZstdWriter:
    """Cut a NAR stream into chunks, compress each into its own frame, write them in order.

    `write()` the NAR bytes, then `finish()` for the chunk table and NarHash/NarSize. With an
    executor, up to `max_inflight` chunks are compressed concurrently; results are written in
    chunk order. Memory stays bounded by (max_inflight + 1) chunks.
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        level: int = 3,
        executor: Executor | None = None,
        max_inflight: int = 4,
    ) -> None:
        self._out = out
        self._level = level
        self._executor = executor
        self._max_inflight = max(1, max_inflight)
        self._local = threading.local()
        self._buffer = bytearray()
        self._pending: deque[Future[tuple[bytes, bytes]] | tuple[bytes, bytes]] = deque()
        self._frame_sizes: list[int] = []
        self._digests: list[bytes] = []
        self._nar = NarHasher()
        self._finished = False

    def _compressor(self) -> zstandard.ZstdCompressor:
        # ZstdCompressor objects must not be shared between threads: one per worker thread.
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self._level, write_content_size=True, write_checksum=True
            )
            self._local.compressor = compressor
        return compressor

    def _compress(self, chunk: bytes) -> tuple[bytes, bytes]:
        return compress_chunk(self._compressor(), chunk)

    def _submit(self, chunk: bytes) -> None:
        if self._executor is None:
            self._pending.append(self._compress(chunk))
        else:
            self._pending.append(self._executor.submit(self._compress, chunk))
        while len(self._pending) > self._max_inflight:
            self._write_oldest()

    def _write_oldest(self) -> None:
        item = self._pending.popleft()
        frame, digest = item.result() if isinstance(item, Future) else item
        self._out.write(frame)
        self._frame_sizes.append(len(frame))
        self._digests.append(digest)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise ValueError("write after finish")
        self._nar.update(data)
        self._buffer += data
        while len(self._buffer) >= CHUNK_SIZE:
            chunk = bytes(self._buffer[:CHUNK_SIZE])
            del self._buffer[:CHUNK_SIZE]
            self._submit(chunk)

    def finish(self) -> tuple[ChunkTable, NarSummary]:
        """Flush the last (short) chunk and return the table and the NAR's hash and size."""
        if not self._finished:
            self._finished = True
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._pending:
                self._write_oldest()
        summary = self._nar.summary()
        table = ChunkTable(summary.size, tuple(self._frame_sizes), tuple(self._digests))
        return table, summary

    def abort(self) -> None:
        """Drop pending work (after an error); waits for running compressions to end."""
        self._finished = True
        while self._pending:
            item = self._pending.popleft()
            if isinstance(item, Future):
                item.cancel() or item.exception()


def read_frame(file: BinaryIO, table: ChunkTable, index: int) -> bytes:
    """The compressed frame of chunk `index` as stored in this node's file."""
    chunk = table.chunk(index)
    file.seek(chunk.offset)
    frame = file.read(chunk.frame_size)
    if len(frame) != chunk.frame_size:
        raise ChunkVerificationError(f"cached file is shorter than its chunk table (chunk {index})")
    return frame


def iter_decompressed(
    file: BinaryIO, table: ChunkTable, *, start_chunk: int = 0, verify: bool = True
) -> Iterator[bytes]:
    """Yield the uncompressed NAR chunk by chunk, each checked against the table."""
    for index in range(start_chunk, table.count):
        chunk = table.chunk(index)
        yield decompress_frame(
            read_frame(file, table, index), chunk.length, chunk.sha256 if verify else None
        )
