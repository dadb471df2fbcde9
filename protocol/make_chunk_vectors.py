"""Regenerate protocol/vectors/chunks.json (run from the repository root).

The vectors are computed with p2pcache's own code; tests/protocol/test_chunk_vectors.py checks
them against an independent, from-the-spec computation, and the NAR bytes against Nix.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

from p2pcache.cache.chunk_table import CHUNK_SIZE, chunk_root
from p2pcache.guix.narinfo import format_nar_hash

CASES = {
    "tree-vector-nar": None,  # tests/vectors/tree.nar, 1088 bytes: one chunk
    "just-over-one-chunk": CHUNK_SIZE + 1 - 112,
    "exactly-two-chunks": 2 * CHUNK_SIZE - 112,
    "two-and-a-half": 2 * CHUNK_SIZE + CHUNK_SIZE // 2,
    "five-chunks": 5 * CHUNK_SIZE - 1000,
}


def vector_contents(length: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < length:
        out += hashlib.sha256(b"p2pcache chunk vector" + struct.pack(">I", i)).digest()
        i += 1
    return bytes(out[:length])


def single_file_nar(contents: bytes) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)

    return (
        s(b"nix-archive-1") + s(b"(") + s(b"type") + s(b"regular") + s(b"contents")
        + s(contents) + s(b")")
    )  # fmt: skip


def describe(name: str, nar: bytes, file_length: int | None) -> dict:
    digests = [
        hashlib.sha256(nar[i : i + CHUNK_SIZE]).digest() for i in range(0, len(nar), CHUNK_SIZE)
    ]
    return {
        "name": name,
        "file_length": file_length,
        "nar_size": len(nar),
        "nar_hash": format_nar_hash(hashlib.sha256(nar).digest()),
        "chunk_sha256": [d.hex() for d in digests],
        "chunk_root": chunk_root(digests).hex(),
    }


def main() -> None:
    cases = []
    for name, length in CASES.items():
        if length is None:
            nar = Path("tests/vectors/tree.nar").read_bytes()
        else:
            nar = single_file_nar(vector_contents(length))
        cases.append(describe(name, nar, length))
    doc = {
        "comment": "protocol/chunks.md v1 vectors; file_length null = tests/vectors/tree.nar",
        "chunk_size": CHUNK_SIZE,
        "cases": cases,
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
