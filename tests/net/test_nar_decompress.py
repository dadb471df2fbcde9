"""Streaming decompression of downloaded NARs: exact output, bounded memory, strict ends."""

import gzip
import hashlib
import io
import itertools
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.cache.chunked_zstd import ChunkedZstdWriter
from p2pcache.net.nar_decompress import (
    MAX_OUTPUT_BURST,
    NarDecompressor,
    NarSizeExceeded,
    NarStreamError,
)

# Compressible but not trivial: 3 MiB of hex digests with runs of zeros.
NAR = b"".join(hashlib.sha256(b"%d" % i).hexdigest().encode() + bytes(40) for i in range(30_000))


def compress(compression: str, data: bytes) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1)
    return data


COMPRESSED = {c: compress(c, NAR) for c in ("zstd", "gzip", "none")}


def run(compression: str, pieces, nar_size: int = len(NAR)) -> bytes:
    decompressor = NarDecompressor(compression, nar_size)
    out = bytearray()
    for piece in pieces:
        for chunk in decompressor.feed(piece):
            out += chunk
    decompressor.finish()
    return bytes(out)


def split(data: bytes, cuts: list[int]):
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_whole_stream_in_one_read(compression):
    assert run(compression, [COMPRESSED[compression]]) == NAR


@settings(max_examples=30, deadline=None)
@given(
    compression=st.sampled_from(["zstd", "gzip", "none"]), cuts=st.lists(st.integers(0, 1 << 22))
)
def test_any_split_of_the_stream_gives_the_same_nar(compression, cuts):
    assert run(compression, split(COMPRESSED[compression], cuts)) == NAR


def test_multi_frame_zstd_from_a_p2pcache_node():
    out = io.BytesIO()
    writer = ChunkedZstdWriter(out)
    writer.write(NAR)
    table, _ = writer.finish()
    assert table.count > 1
    data = out.getvalue()
    assert run("zstd", [data[i : i + 70_000] for i in range(0, len(data), 70_000)]) == NAR


def test_multi_member_gzip():
    half = len(NAR) // 2
    stream = gzip.compress(NAR[:half], 1) + gzip.compress(NAR[half:], 1)
    assert run("gzip", [stream[:1000], stream[1000:]]) == NAR


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_garbage_after_the_stream_is_refused(compression):
    with pytest.raises(NarStreamError, match="corrupt"):
        run(compression, [COMPRESSED[compression] + b"trailing garbage"])


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_stream_cut_inside_a_frame_is_refused_at_the_end(compression):
    decompressor = NarDecompressor(compression, len(NAR))
    for _ in decompressor.feed(COMPRESSED[compression][:-10]):
        pass
    with pytest.raises(NarStreamError, match="ends inside a"):
        decompressor.finish()


def test_complete_stream_shorter_than_narsize_is_refused():
    with pytest.raises(NarStreamError, match="but its NarSize is"):
        run("zstd", [COMPRESSED["zstd"]], nar_size=len(NAR) + 1)


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_longer_than_narsize_is_refused_before_the_extra_bytes_are_yielded(compression):
    decompressor = NarDecompressor(compression, len(NAR) - 1)
    out = bytearray()
    with pytest.raises(NarSizeExceeded, match="past its NarSize"):
        for chunk in decompressor.feed(COMPRESSED[compression]):
            out += chunk
    assert len(out) <= len(NAR) - 1
    assert NAR.startswith(out)


def zero_bomb(compression: str, size: int) -> bytes:
    block = bytes(1 << 20)
    if compression == "gzip":
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(compressor.compress(block) for _ in range(size >> 20)) + compressor.flush()
    zstd = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join(zstd.compress(block) for _ in range(size >> 20)) + zstd.flush()


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_bomb_never_expands_beyond_one_burst(compression):
    # 32 MiB of zeros in one network read, declared as a 1 MiB NAR.
    bomb = zero_bomb(compression, 32 << 20)
    assert len(bomb) < 40_000
    decompressor = NarDecompressor(compression, 1 << 20)
    sizes = []
    with pytest.raises(NarSizeExceeded):
        for chunk in decompressor.feed(bomb):
            sizes.append(len(chunk))
    assert sum(sizes) <= 1 << 20
    assert decompressor.produced <= (1 << 20) + MAX_OUTPUT_BURST


def test_unknown_compression_is_a_programming_error():
    with pytest.raises(ValueError, match="lzip"):
        NarDecompressor("lzip", 10)
