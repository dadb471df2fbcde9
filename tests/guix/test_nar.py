"""The NAR writer: byte layout of each node type, ordering, streaming, refusals.

Byte identity with Nix and Guix is checked in test_nar_interop.py; these tests pin the layout
by hand so a failure says which rule broke.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
from pathlib import Path

import pytest

from p2pcache.guix import nix32
from p2pcache.guix.nar import (
    NarDumpError,
    NarHasher,
    NarSummary,
    drain_in_background,
    dump_nar,
    iter_nar,
    nar_string,
)


def s(text: str | bytes) -> bytes:
    return nar_string(text.encode() if isinstance(text, str) else text)


def nar_of(path: Path, **kwargs: int) -> bytes:
    return b"".join(iter_nar(path, **kwargs))


def regular(contents: bytes, *, executable: bool = False) -> bytes:
    marker = s("executable") + s("") if executable else b""
    pad = bytes(-len(contents) & 7)
    return (
        s("(")
        + s("type")
        + s("regular")
        + marker
        + s("contents")
        + struct.pack("<Q", len(contents))
        + contents
        + pad
        + s(")")
    )


def test_string_primitive_is_length_bytes_and_zero_padding() -> None:
    assert nar_string(b"") == bytes(8)
    assert nar_string(b"(") == b"\x01" + bytes(7) + b"(" + bytes(7)
    assert nar_string(b"12345678") == b"\x08" + bytes(7) + b"12345678"


def test_regular_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"Hello, Guix!\n")
    assert nar_of(tmp_path / "f") == s("nix-archive-1") + regular(b"Hello, Guix!\n")


def test_executable_marker_comes_before_contents(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"#!/bin/sh\n")
    f.chmod(0o700)
    assert nar_of(f) == s("nix-archive-1") + regular(b"#!/bin/sh\n", executable=True)


def test_only_the_owner_execute_bit_makes_a_file_executable(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    f.chmod(0o611)
    assert nar_of(f) == s("nix-archive-1") + regular(b"x")


def test_empty_file_has_no_padding(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    assert nar_of(tmp_path / "f") == s("nix-archive-1") + regular(b"")


def test_symlink_is_stored_not_followed(tmp_path: Path) -> None:
    os.symlink("/etc/passwd", tmp_path / "l")
    expected = s("(") + s("type") + s("symlink") + s("target") + s("/etc/passwd") + s(")")
    assert nar_of(tmp_path / "l") == s("nix-archive-1") + expected


def test_dangling_symlink_inside_a_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("no/such/file", root / "l")
    assert s("no/such/file") in nar_of(root)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    expected = s("(") + s("type") + s("directory") + s(")")
    assert nar_of(tmp_path / "d") == s("nix-archive-1") + expected


def test_directory_entries_and_nesting(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_bytes(b"abc")

    def entry(name: str, node: bytes) -> bytes:
        return s("entry") + s("(") + s("name") + s(name) + s("node") + node + s(")")

    def directory(*entries: bytes) -> bytes:
        return s("(") + s("type") + s("directory") + b"".join(entries) + s(")")

    expected = directory(entry("sub", directory(entry("f", regular(b"abc")))))
    assert nar_of(root) == s("nix-archive-1") + expected


def test_entries_are_sorted_by_bytes_not_by_decoded_text(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # "\ue000" is b"\xee\x80\x80"; the lone byte 0xf0 decodes to the surrogate "\udcf0", which
    # sorts before "\ue000" as text but after it as bytes. Nix and Guix use byte order.
    names = [b"\xf0", "\ue000".encode(), b"B", b"a", b"a.b", b"a-b", b"ab"]
    for name in names:
        (Path(os.fsdecode(bytes(root))) / os.fsdecode(name)).write_bytes(b"")
    nar = nar_of(root)
    positions = [nar.index(s(name)) for name in sorted(names)]
    assert positions == sorted(positions)


def test_big_file_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    f = tmp_path / "big"
    data = os.urandom(5 << 20)
    f.write_bytes(data)
    chunks = list(iter_nar(f, buffer_size=64 << 10))
    assert max(len(c) for c in chunks) <= 64 << 10
    assert len(chunks) >= (5 << 20) // (64 << 10)
    assert b"".join(chunks) == s("nix-archive-1") + regular(data)


def test_small_tokens_are_coalesced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for i in range(2000):
        (root / f"f{i:04}").write_bytes(b"x" * (i % 17))
    chunks = list(iter_nar(root, buffer_size=64 << 10))
    total = sum(len(c) for c in chunks)
    assert total > 200_000
    assert len(chunks) <= total // (64 << 10) + 1
    assert all(len(c) <= 2 * (64 << 10) for c in chunks)


def test_chunks_may_be_kept_by_the_consumer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for i in range(300):
        (root / f"f{i:03}").write_bytes(os.urandom(1000))
    kept = list(iter_nar(root, buffer_size=4096))
    assert b"".join(kept) == nar_of(root, buffer_size=1 << 20)


@pytest.mark.parametrize(("kind", "described"), [("fifo", "a FIFO"), ("socket", "a socket")])
def test_refuses_special_files(tmp_path: Path, kind: str, described: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    special = root / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(special))
        sock.close()
    with pytest.raises(NarDumpError, match=f"special is {described}; a NAR holds only"):
        nar_of(root)
    with pytest.raises(NarDumpError):
        nar_of(special)


def test_refuses_a_device(tmp_path: Path) -> None:
    with pytest.raises(NarDumpError, match="character device"):
        nar_of(Path("/dev/null"))


def test_file_that_shrinks_while_read_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(os.urandom(1 << 20))
    chunks = iter_nar(f, buffer_size=4096)
    next(chunks)  # the header: the file is open and its size recorded
    next(chunks)
    os.truncate(f, 10_000)
    with pytest.raises(NarDumpError, match="changed while it was archived"):
        list(chunks)


def test_missing_path_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        nar_of(tmp_path / "nope")


def test_closing_the_generator_early_releases_descriptors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "big").write_bytes(os.urandom(1 << 20))
    before = len(os.listdir("/proc/self/fd"))
    chunks = iter_nar(root, buffer_size=4096)
    next(chunks)
    next(chunks)
    assert len(os.listdir("/proc/self/fd")) > before
    chunks.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_hasher_and_summary(tmp_path: Path) -> None:
    hasher = NarHasher()
    hasher.update(b"abc")
    hasher.update(memoryview(b"def"))
    summary = hasher.summary()
    assert summary == NarSummary(hashlib.sha256(b"abcdef").digest(), 6)
    assert summary.nar_hash == "sha256:" + nix32.encode(hashlib.sha256(b"abcdef").digest())


def test_dump_nar_writes_and_hashes_the_same_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for i in range(50):
        (root / f"f{i}").write_bytes(os.urandom(i * 1000))
    out = io.BytesIO()
    summary = dump_nar(root, out, buffer_size=8192)
    nar = out.getvalue()
    assert nar == nar_of(root)
    assert summary == NarSummary(hashlib.sha256(nar).digest(), len(nar))
    assert dump_nar(root, None) == summary


def test_dump_nar_reports_a_failing_output(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(100_000))

    class Full(io.RawIOBase):
        def write(self, b: object) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        dump_nar(tmp_path / "f", Full(), buffer_size=4096)  # type: ignore[arg-type]


def test_dump_nar_reports_a_failing_walk(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    with pytest.raises(NarDumpError):
        dump_nar(root, io.BytesIO())


def test_drain_in_background_keeps_order_and_closes_producer() -> None:
    seen: list[bytes] = []
    closed = []

    def produce():
        try:
            for i in range(1000):
                yield str(i).encode()
        finally:
            closed.append(True)

    drain_in_background(produce(), seen.append, depth=2)
    assert seen == [str(i).encode() for i in range(1000)]
    assert closed == [True]

    def explode(chunk: bytes) -> None:
        if chunk == b"10":
            raise ValueError("boom")

    closed.clear()
    with pytest.raises(ValueError, match="boom"):
        drain_in_background(produce(), explode, depth=2)
    assert closed == [True]
