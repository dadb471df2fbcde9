"""The NAR parser and restorer on well-formed NARs: events, modes, streaming, round trips.

Hostile and malformed NARs are in test_nar_restore_hostile.py; Nix and Guix in
test_nar_interop.py.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2pcache.errors import NarFormatError, NarRestoreError
from p2pcache.guix.nar import NarSummary, dump_nar, iter_nar, nar_string
from p2pcache.guix.nar_restore import (
    DirectoryEnd,
    DirectoryStart,
    FileData,
    FileEnd,
    FileStart,
    NarParser,
    NarRestorer,
    Symlink,
    restore_nar,
)
from tests.guix.nar_trees import (
    Link,
    Node,
    RegularFile,
    build_tree,
    features,
    read_tree,
    remove_tree,
    trees,
)


def parse_all(chunks: list[bytes]) -> list[tuple[object, ...]]:
    """Events of a whole NAR, with FileData merged so that chunking does not show."""
    parser = NarParser()
    events: list[tuple[object, ...]] = []
    for chunk in chunks:
        for item in parser.feed(chunk):
            if isinstance(item, FileData):
                if events and events[-1][0] == "data":
                    events[-1] = ("data", events[-1][1] + bytes(item.data))  # type: ignore[operator]
                else:
                    events.append(("data", bytes(item.data)))
            else:
                events.append((type(item).__name__, *item))
    parser.finish()
    assert parser.is_complete
    return events


def test_parser_events_for_the_tree_vector(vectors_dir: Path) -> None:
    nar = (vectors_dir / "tree.nar").read_bytes()
    assert parse_all([nar]) == [
        ("DirectoryStart", None),
        ("FileStart", b"README", False, 13),
        ("data", b"Hello, Guix!\n"),
        ("FileEnd",),
        ("DirectoryStart", b"bin"),
        ("FileStart", b"hello", True, 18),
        ("data", b"#!/bin/sh\necho hi\n"),
        ("FileEnd",),
        ("DirectoryEnd",),
        ("FileStart", b"empty", False, 0),
        ("FileEnd",),
        ("Symlink", b"run", b"bin/hello"),
        ("DirectoryEnd",),
    ]


def test_event_types_are_plain_values() -> None:
    assert DirectoryStart(None) == DirectoryStart(None)
    assert FileStart(b"a", True, 3).executable
    assert Symlink(b"l", b"t").target == b"t"
    assert DirectoryEnd() == () and FileEnd() == ()


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_parser_result_does_not_depend_on_chunking(data: st.DataObject) -> None:
    nar = Path(__file__).parents[1].joinpath("vectors", "tree.nar").read_bytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(nar)), max_size=40)))
    chunks = [nar[a:b] for a, b in zip([0, *cuts], [*cuts, len(nar)], strict=True)]
    assert parse_all(chunks) == parse_all([nar])


def test_parser_accepts_bytearray_and_memoryview(vectors_dir: Path) -> None:
    nar = (vectors_dir / "tree.nar").read_bytes()
    assert parse_all([bytearray(nar[:100]), memoryview(nar)[100:]]) == parse_all([nar])  # type: ignore[list-item]


def test_file_data_views_stay_valid_after_later_feeds(vectors_dir: Path) -> None:
    nar = (vectors_dir / "single-file.nar").read_bytes()
    parser = NarParser()
    buffer = bytearray(nar[:80])
    events = parser.feed(buffer)
    buffer[:] = bytes(80)  # the caller reuses its buffer
    events += parser.feed(nar[80:])
    data = b"".join(bytes(e.data) for e in events if isinstance(e, FileData))
    assert data == b"Hello, Guix!\n"


def test_restores_the_tree_vector_with_guix_modes(vectors_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    summary = restore_nar(io.BytesIO((vectors_dir / "tree.nar").read_bytes()), dest)
    assert summary.nar_hash == "sha256:1z6qnc91wqh59vi52vhnclhv0za6axqxzb25kmlvxcap7d0iky80"
    assert summary.size == 1088
    assert read_tree(dest) == {
        "README": RegularFile(b"Hello, Guix!\n"),
        "bin": {"hello": RegularFile(b"#!/bin/sh\necho hi\n", executable=True)},
        "empty": RegularFile(b""),
        "run": Link("bin/hello"),
    }
    modes = {
        p.relative_to(dest).as_posix(): stat.S_IMODE(p.lstat().st_mode)
        for p in [dest, *dest.rglob("*")]
        if not p.is_symlink()
    }
    assert modes == {".": 0o555, "README": 0o444, "bin": 0o555, "bin/hello": 0o555, "empty": 0o444}
    assert {p.lstat().st_mtime for p in [dest, *dest.rglob("*")]} == {1.0}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_restores_a_single_file_root(vectors_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "file"
    restore_nar([(vectors_dir / "single-file.nar").read_bytes()], dest)
    assert dest.read_bytes() == b"Hello, Guix!\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_restores_a_symlink_root(tmp_path: Path) -> None:
    os.symlink("/nowhere", tmp_path / "l")
    nar = b"".join(iter_nar(tmp_path / "l"))
    restore_nar([nar], tmp_path / "restored")
    assert os.readlink(tmp_path / "restored") == "/nowhere"
    assert sorted(os.listdir(tmp_path)) == ["l", "restored"]


def test_source_may_be_a_file_or_an_iterable_of_chunks(vectors_dir: Path, tmp_path: Path) -> None:
    nar = (vectors_dir / "tree.nar").read_bytes()
    with open(vectors_dir / "tree.nar", "rb") as f:
        a = restore_nar(f, tmp_path / "a", read_size=7)
    b = restore_nar((nar[i : i + 3] for i in range(0, len(nar), 3)), tmp_path / "b")
    assert a == b
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")


def test_refuses_an_existing_destination(vectors_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(NarRestoreError, match="already exists"):
        restore_nar([(vectors_dir / "tree.nar").read_bytes()], dest)
    assert (dest / "keep").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_refuses_an_existing_dangling_symlink_as_destination(
    vectors_dir: Path, tmp_path: Path
) -> None:
    os.symlink(tmp_path / "elsewhere", tmp_path / "out")
    with pytest.raises(NarRestoreError, match="already exists"):
        restore_nar([(vectors_dir / "tree.nar").read_bytes()], tmp_path / "out")
    assert not (tmp_path / "elsewhere").exists()


def test_destination_parent_may_be_reached_through_a_symlink(
    vectors_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "alias")
    restore_nar([(vectors_dir / "single-file.nar").read_bytes()], tmp_path / "alias" / "f")
    assert (tmp_path / "real" / "f").read_bytes() == b"Hello, Guix!\n"


def test_refuses_a_missing_parent(vectors_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NarRestoreError, match="cannot restore into"):
        restore_nar([(vectors_dir / "tree.nar").read_bytes()], tmp_path / "no" / "out")


def test_destination_appearing_during_restore_is_not_replaced(
    vectors_dir: Path, tmp_path: Path
) -> None:
    with NarRestorer(tmp_path / "out") as restorer:
        restorer.feed((vectors_dir / "single-file.nar").read_bytes())
        (tmp_path / "out").write_text("raced")
        with pytest.raises(NarRestoreError, match="already exists"):
            restorer.finish()
    assert (tmp_path / "out").read_text() == "raced"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_expected_summary_is_checked_before_anything_appears(
    vectors_dir: Path, tmp_path: Path
) -> None:
    nar = (vectors_dir / "tree.nar").read_bytes()
    wrong = NarSummary(bytes(32), len(nar))
    with pytest.raises(NarRestoreError, match="not the one expected"):
        restore_nar([nar], tmp_path / "out", expected=wrong)
    assert os.listdir(tmp_path) == []
    right = restore_nar([nar], tmp_path / "out")
    assert restore_nar([nar], tmp_path / "again", expected=right) == right


def test_aborting_removes_a_partial_read_only_tree(vectors_dir: Path, tmp_path: Path) -> None:
    nar = (vectors_dir / "tree.nar").read_bytes()
    restorer = NarRestorer(tmp_path / "out")
    restorer.feed(nar[:-60])  # bin/ is complete, hence already 0555
    assert len(os.listdir(tmp_path)) == 1
    restorer.abort()
    restorer.abort()
    assert os.listdir(tmp_path) == []


def test_cleanup_works_for_an_unprivileged_user(vectors_dir: Path) -> None:
    """As root, read-only directories do not stop unlink; as a plain user they do.

    The restores run in a forked child that dropped to uid/gid 65534 (nobody).
    """
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: the other cleanup tests cover this case")
    nar = (vectors_dir / "tree.nar").read_bytes()
    with tempfile.TemporaryDirectory() as work:  # not under pytest's root-only tmp_path
        os.chown(work, 65534, 65534)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            status = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    restore_nar([nar[:-60]], Path(work, "out"))  # bin/ is sealed (0555) by then
                except NarFormatError:
                    restore_nar([nar], Path(work, "ok"))
                    status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.listdir(work) == ["ok"]
        assert stat.S_IMODE(os.stat(Path(work, "ok", "bin")).st_mode) == 0o555


def _lazy_big_nar(size: int) -> Iterator[bytes]:
    """A one-file NAR of `size` bytes, produced 1 MiB at a time and never whole."""
    yield (
        nar_string(b"nix-archive-1")
        + nar_string(b"(")
        + nar_string(b"type")
        + nar_string(b"regular")
        + nar_string(b"contents")
        + size.to_bytes(8, "little")
    )
    block = bytes(range(256)) * 4096
    for offset in range(0, size, len(block)):
        yield block[: min(len(block), size - offset)]
    yield bytes(-size & 7) + nar_string(b")")


def test_a_big_file_is_streamed_not_buffered(tmp_path: Path) -> None:
    size = 64 << 20
    tracemalloc.start()
    try:
        summary = restore_nar(_lazy_big_nar(size), tmp_path / "big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big").stat().st_size == size
    assert summary.size == size + 112
    assert peak < 8 << 20


@given(trees())
@settings(max_examples=40, deadline=None)
def test_dump_restore_dump_round_trip(tree: Node) -> None:
    for feature in features(tree):
        event(feature)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        build_tree(tree, base / "src")
        nar = b"".join(iter_nar(base / "src"))
        summary = restore_nar([nar], base / "dst")
        assert summary == dump_nar(base / "src")
        assert b"".join(iter_nar(base / "dst")) == nar
        assert read_tree(base / "dst") == read_tree(base / "src")
        assert sorted(os.listdir(base)) == ["dst", "src"]
        remove_tree(base / "dst")
