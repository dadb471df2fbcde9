"""Chunk table: geometry, encoding, and refusal of every malformed table."""

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.cache.chunk_table import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    ChunkTable,
    ChunkTableError,
    chunk_count,
    chunk_length,
    decode_chunk_table,
)


def make_table(nar_size: int, frame: int = 100) -> ChunkTable:
    n = chunk_count(nar_size)
    return ChunkTable(
        nar_size,
        tuple(frame + i for i in range(n)),
        tuple(hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(n)),
    )


def test_geometry():
    assert chunk_count(1) == 1
    assert chunk_count(CHUNK_SIZE) == 1
    assert chunk_count(CHUNK_SIZE + 1) == 2
    assert chunk_length(0, CHUNK_SIZE + 1) == CHUNK_SIZE
    assert chunk_length(1, CHUNK_SIZE + 1) == 1
    with pytest.raises(ChunkTableError):
        chunk_count(0)
    with pytest.raises(ChunkTableError):
        chunk_length(2, CHUNK_SIZE + 1)


def test_offsets_and_file_size():
    table = make_table(3 * CHUNK_SIZE - 5)
    assert table.offsets == (0, 100, 201)
    assert table.file_size == 100 + 101 + 102
    chunks = list(table)
    assert [c.length for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE - 5]
    assert chunks[2].offset == 201


@given(st.integers(1, 40 * CHUNK_SIZE))
def test_encode_decode_round_trip(nar_size):
    table = make_table(nar_size)
    data = table.encode()
    assert len(data) == 24 + 36 * table.count
    assert decode_chunk_table(data) == table


def test_header_layout():
    data = make_table(10).encode()
    assert data[:4] == b"P2CT"
    assert data[4] == 1
    assert struct.unpack(">IQI", data[8:24]) == (CHUNK_SIZE, 10, 1)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d[:10], "shorter than its header"),
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: d[:4] + b"\x02" + d[5:], "version"),
        (lambda d: d[:5] + b"\x00\x01\x00" + d[8:], "reserved"),
        (lambda d: d[:8] + struct.pack(">I", 4096) + d[12:], "chunk size"),
        (lambda d: d + b"\0", "wrong length"),
        (lambda d: d[:-1], "wrong length"),
        (lambda d: d[:20] + struct.pack(">I", 3) + d[24:], "wrong length"),
        (lambda d: d[:12] + struct.pack(">Q", 3 * CHUNK_SIZE) + d[20:], "chunks"),
        (lambda d: d[:20] + struct.pack(">I", MAX_CHUNKS + 1) + d[24:], "allowed"),
        (lambda d: d[:24] + struct.pack(">I", 0) + d[28:], "out of range"),
        (lambda d: d[:24] + struct.pack(">I", 2 * CHUNK_SIZE) + d[28:], "out of range"),
    ],
)
def test_malformed_tables_are_refused(mutate, problem):
    data = make_table(2 * CHUNK_SIZE).encode()
    with pytest.raises(ChunkTableError, match=problem):
        decode_chunk_table(mutate(data))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_fail_cleanly(data):
    with contextlib.suppress(ChunkTableError):
        decode_chunk_table(data)
