"""protocol/chunks.md vectors, recomputed from the document's own words.

The chunk digests and root are recomputed here from the spec (not with p2pcache's helpers), and
the vector NARs are checked against Nix's serializer, so the vectors pin the protocol rather
than whatever our code happens to do.
"""

import hashlib
import json
import struct
import subprocess
from pathlib import Path

import pytest

from p2pcache.cache.chunk_table import CHUNK_SIZE, ChunkTable, chunk_root
from p2pcache.guix import nix32

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "chunks.json").read_text())


def spec_contents(length: int) -> bytes:
    blocks = -(-length // 32)
    digests = (
        hashlib.sha256(b"p2pcache chunk vector" + struct.pack(">I", i)) for i in range(blocks)
    )
    return b"".join(d.digest() for d in digests)[:length]


def spec_mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + spec_mth(leaves[:k]) + spec_mth(leaves[k:])).digest()


def vector_nar(case, tmp_path: Path, nix_store: str | None) -> bytes:
    if case["file_length"] is None:
        return (ROOT / "tests" / "vectors" / "tree.nar").read_bytes()
    f = tmp_path / "contents"
    f.write_bytes(spec_contents(case["file_length"]))
    return subprocess.run([nix_store, "--dump", str(f)], capture_output=True, check=True).stdout


def test_chunk_size_is_the_documented_constant():
    assert VECTORS["chunk_size"] == CHUNK_SIZE == 1 << 20


@pytest.mark.interop
@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vector(case, tmp_path, nix_store):
    nar = vector_nar(case, tmp_path, nix_store)
    assert len(nar) == case["nar_size"]
    assert "sha256:" + nix32.encode(hashlib.sha256(nar).digest()) == case["nar_hash"]
    digests = [
        hashlib.sha256(nar[i : i + CHUNK_SIZE]).digest() for i in range(0, len(nar), CHUNK_SIZE)
    ]
    assert [d.hex() for d in digests] == case["chunk_sha256"]
    assert spec_mth(digests).hex() == case["chunk_root"]
    assert chunk_root(digests).hex() == case["chunk_root"]
    table = ChunkTable(len(nar), tuple([1000] * len(digests)), tuple(digests))
    assert table.root.hex() == case["chunk_root"]
