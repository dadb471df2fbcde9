"""NAR files: atomic commit, nothing half visible, names that cannot escape the directory."""

import io
import os
import random
import subprocess

import pytest

from p2pcache.cache.chunk_table import CHUNK_SIZE
from p2pcache.cache.chunked_zstd import ChunkedZstdWriter, ChunkVerificationError
from p2pcache.cache.nar_store import NarStore, NarStoreError, nar_file_name
from p2pcache.errors import StorePathError

HASH = "q346zq0bj2n5qyqp0xf6xq9p83w3yipf"


def test_names_come_from_validated_hash_parts():
    assert nar_file_name(HASH) == f"q3/{HASH}.zst"
    for bad in ("../../etc", HASH[:-1], HASH.upper(), HASH + "/x"):
        with pytest.raises(StorePathError):
            nar_file_name(bad)


def test_path_of_refuses_names_outside(tmp_path):
    store = NarStore(tmp_path / "nar")
    for bad in ("../index.sqlite", "/etc/passwd", f"q3/{HASH}.zst/..", f"q3/../{HASH}.zst"):
        with pytest.raises(NarStoreError):
            store.path_of(bad)


def test_commit_makes_the_file_visible_only_when_complete(tmp_path):
    store = NarStore(tmp_path / "nar")
    store.prepare()
    with store.writing() as pending:
        pending.file.write(b"frames")
        assert list(store.iter_names()) == []
        name = store.commit(pending, HASH)
    assert list(store.iter_names()) == [name]
    fd = store.open(name)
    assert os.read(fd, 100) == b"frames"
    os.close(fd)
    assert list((tmp_path / "nar" / ".tmp").rglob("*.part")) == []


def test_an_error_while_writing_leaves_nothing(tmp_path):
    store = NarStore(tmp_path / "nar")
    store.prepare()
    with pytest.raises(RuntimeError), store.writing() as pending:
        pending.file.write(b"half")
        raise RuntimeError("crash")
    assert list(store.iter_names()) == []
    assert list((tmp_path / "nar" / ".tmp").rglob("*.part")) == []


def test_prepare_removes_temp_files_of_dead_processes_only(tmp_path):
    root = tmp_path / "nar"
    proc = subprocess.Popen(["true"])
    proc.wait()
    (root / ".tmp" / str(proc.pid)).mkdir(parents=True)
    (root / ".tmp" / str(proc.pid) / "x.part").write_bytes(b"left by a crash")
    alive = subprocess.Popen(["sleep", "30"])
    try:
        (root / ".tmp" / str(alive.pid)).mkdir()
        NarStore(root).prepare()
        assert not (root / ".tmp" / str(proc.pid)).exists()
        assert (root / ".tmp" / str(alive.pid)).exists()
    finally:
        alive.kill()
        alive.wait()


def test_missing_file_is_a_clear_error(tmp_path):
    store = NarStore(tmp_path / "nar")
    store.prepare()
    with pytest.raises(NarStoreError, match="missing"):
        store.open(f"q3/{HASH}.zst")


def test_read_nar_checks_the_name_at_once_and_each_chunk_as_it_reads(tmp_path):
    store = NarStore(tmp_path / "nar")
    store.prepare()
    nar = random.Random(3).randbytes(2 * CHUNK_SIZE + 100)
    out = io.BytesIO()
    writer = ChunkedZstdWriter(out, level=3)
    writer.write(nar)
    table, _ = writer.finish()
    with store.writing() as pending:
        pending.file.write(out.getvalue())
        name = store.commit(pending, "a" * 32)
    assert b"".join(store.read_nar(name, table)) == nar
    with pytest.raises(NarStoreError):
        store.read_nar("../../etc/passwd", table)  # refused before any read
    data = bytearray(out.getvalue())
    data[-5] ^= 1
    store.path_of(name).write_bytes(data)
    pieces = store.read_nar(name, table)
    assert next(pieces) == nar[:CHUNK_SIZE]  # the first chunks are intact
    with pytest.raises(ChunkVerificationError):
        list(pieces)
