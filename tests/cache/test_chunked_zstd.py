"""Chunked zstd: frames per chunk, one valid zstd stream, verified on the way back."""

import hashlib
import io
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from p2pcache.cache.chunk_table import CHUNK_SIZE, chunk_root
from p2pcache.cache.chunked_zstd import (
    ChunkedZstdWriter,
    ChunkVerificationError,
    decompress_frame,
    iter_decompressed,
    read_frame,
)
from tests.conftest import require_binary


def sample(size: int) -> bytes:
    # Compressible but not trivial: random words.
    rnd = os.urandom(size // 16 + 1)
    return (rnd.hex() * 8)[:size].encode()


def chunk_starts(size: int) -> range:
    return range(0, size, CHUNK_SIZE)


def bake(data: bytes, executor=None, pieces: int = 7) -> tuple[bytes, object, object]:
    out = io.BytesIO()
    writer = ChunkedZstdWriter(out, level=3, executor=executor)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
    table, summary = writer.finish()
    return out.getvalue(), table, summary


@pytest.mark.parametrize("size", [1, 1000, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 12345])
def test_frames_decode_as_one_stream(size):
    data = sample(size)
    with ThreadPoolExecutor(2) as pool:
        blob, table, summary = bake(data, pool)
    assert summary.size == size
    assert summary.sha256 == hashlib.sha256(data).digest()
    assert table.count == -(-size // CHUNK_SIZE)
    assert table.file_size == len(blob)
    digests = [
        hashlib.sha256(data[i : i + CHUNK_SIZE]).digest() for i in range(0, size, CHUNK_SIZE)
    ]
    assert list(table.digests) == digests
    assert table.root == chunk_root(digests)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    assert reader.read() == data
    assert b"".join(iter_decompressed(io.BytesIO(blob), table)) == data


def test_same_table_digests_with_or_without_threads():
    data = sample(2 * CHUNK_SIZE + 5)
    _, t1, _ = bake(data, None, pieces=1)
    with ThreadPoolExecutor(2) as pool:
        _, t2, _ = bake(data, pool, pieces=50)
    assert t1.digests == t2.digests and t1.root == t2.root


def test_zstd_command_line_decodes_it(tmp_path):
    require_binary("zstd", "zstd")
    data = sample(2 * CHUNK_SIZE + 77)
    blob, _, _ = bake(data)
    f = tmp_path / "x.zst"
    f.write_bytes(blob)
    out = subprocess.run(["zstd", "-d", "-c", str(f)], capture_output=True, check=True).stdout
    assert out == data


def test_frame_checks():
    data = sample(CHUNK_SIZE + 10)
    blob, table, _ = bake(data)
    f = io.BytesIO(blob)
    frame1 = read_frame(f, table, 1)
    assert decompress_frame(frame1, 10, table.digests[1]) == data[CHUNK_SIZE:]
    with pytest.raises(ChunkVerificationError, match="SHA-256"):
        decompress_frame(frame1, 10, table.digests[0])
    with pytest.raises(ChunkVerificationError, match="declares"):
        decompress_frame(frame1, 11, None)
    with pytest.raises(ChunkVerificationError, match=r"extra bytes|truncated"):
        decompress_frame(frame1 + b"\0", 10, None)
    with pytest.raises(ChunkVerificationError):
        decompress_frame(frame1[:-3], 10, None)
    with pytest.raises(ChunkVerificationError, match="not a zstd frame"):
        decompress_frame(b"garbage!", 10, None)


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("declared", [8, 10])
def test_a_frame_whose_header_lies_about_its_size_is_refused(checksum, declared):
    """The declared size passes the check against the table, the content does not match it."""
    compressor = zstandard.ZstdCompressor(write_content_size=True, write_checksum=checksum)
    frame = bytearray(compressor.compress(b"abcdefghi"))
    assert frame[5] == 9  # single-segment frame: the content size is the byte after the FHD
    frame[5] = declared
    assert zstandard.frame_content_size(bytes(frame)) == declared
    with pytest.raises(ChunkVerificationError, match="corrupt zstd frame"):
        decompress_frame(bytes(frame), declared, None)


def test_decompression_bomb_is_refused_before_inflating():
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * (64 * CHUNK_SIZE))
    with pytest.raises(ChunkVerificationError, match="declares"):
        decompress_frame(bomb, CHUNK_SIZE, None)
    no_size = zstandard.ZstdCompressor(write_content_size=False)
    unsized = no_size.compressobj().compress(b"\0" * 10) + no_size.compressobj().flush()
    with pytest.raises(ChunkVerificationError):
        decompress_frame(unsized, 10, None)


def test_corrupted_cache_file_is_detected_on_read():
    data = sample(2 * CHUNK_SIZE)
    blob, table, _ = bake(data)
    broken = bytearray(blob)
    broken[table.offsets[1] + 20] ^= 0xFF
    with pytest.raises(ChunkVerificationError):
        list(iter_decompressed(io.BytesIO(bytes(broken)), table))
    with pytest.raises(ChunkVerificationError, match="shorter"):
        list(iter_decompressed(io.BytesIO(blob[:-5]), table))
