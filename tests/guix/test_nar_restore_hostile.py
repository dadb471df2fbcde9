"""Hostile and malformed NARs, one test per attack class.

Every rejection must be a NarFormatError and must leave nothing behind: no destination, no
temporary directory, and nothing written outside (checked with a directory the NARs aim at).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2pcache.errors import NarFormatError
from p2pcache.guix.nar import iter_nar, nar_string
from p2pcache.guix.nar_restore import (
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    MAX_SYMLINK_TARGET_LENGTH,
    DirectoryStart,
    FileStart,
    NarParser,
    NarRestorer,
    Symlink,
    restore_nar,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def s(value: bytes | str) -> bytes:
    return nar_string(value.encode() if isinstance(value, str) else value)


MAGIC = s("nix-archive-1")


def regular(contents: bytes = b"", *, executable: bool = False) -> bytes:
    marker = s("executable") + s("") if executable else b""
    return (
        s("(")
        + s("type")
        + s("regular")
        + marker
        + s("contents")
        + len(contents).to_bytes(8, "little")
        + contents
        + bytes(-len(contents) & 7)
        + s(")")
    )


def symlink(target: bytes | str) -> bytes:
    return s("(") + s("type") + s("symlink") + s("target") + s(target) + s(")")


def directory(*entries: tuple[bytes | str, bytes]) -> bytes:
    body = b"".join(
        s("entry") + s("(") + s("name") + s(name) + s("node") + node + s(")")
        for name, node in entries
    )
    return s("(") + s("type") + s("directory") + body + s(")")


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    """An empty directory to restore into; checked to be empty again after a rejection."""
    (tmp_path / "parent").mkdir()
    return tmp_path / "parent"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory hostile NARs point their symlinks at; must stay empty."""
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


def assert_rejected(nar: bytes, parent: Path, match: str, **kwargs: int) -> None:
    with pytest.raises(NarFormatError, match=match):
        restore_nar([nar], parent / "out", **kwargs)
    assert os.listdir(parent) == []


# --- not a NAR at all ---


def test_rejects_empty_input(parent: Path) -> None:
    assert_rejected(b"", parent, "empty")


def test_rejects_bad_magic(parent: Path) -> None:
    assert_rejected(s("nix-archive-2") + regular(), parent, "bad magic")
    assert_rejected(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", parent, "not a NAR")


def test_rejects_unknown_tokens(parent: Path) -> None:
    assert_rejected(MAGIC + s("[") + s("type"), parent, "expected '\\(', found '\\['")
    assert_rejected(MAGIC + s("(") + s("type") + s("fifo") + s(")"), parent, "node type 'fifo'")
    misspelt = directory(("a", regular())).replace(s("name"), s("nmae"))
    assert_rejected(MAGIC + misspelt, parent, "expected 'name', found 'nmae'")
    contents_in_symlink = symlink("x").replace(s("target"), s("contents"))
    assert_rejected(MAGIC + contents_in_symlink, parent, "expected 'target'")


def test_rejects_oversized_length_prefix_without_waiting_for_it() -> None:
    for huge in (300, 1 << 40, (1 << 64) - 1):
        parser = NarParser()
        # a name claiming `huge` bytes: refused as soon as its length prefix is read
        nar = MAGIC + directory(("a", regular()))[:-8]
        nar = nar.replace(s("a"), huge.to_bytes(8, "little"), 1)
        with pytest.raises(NarFormatError, match=f"string of {huge} bytes"):
            parser.feed(nar[: nar.index(huge.to_bytes(8, "little")) + 8])


# --- names that would escape or collide ---


def test_rejects_dotdot_name(parent: Path) -> None:
    assert_rejected(MAGIC + directory(("..", regular(b"x"))), parent, "entry name '..'")


def test_rejects_dot_name(parent: Path) -> None:
    assert_rejected(MAGIC + directory((".", regular(b"x"))), parent, "entry name '.'")


def test_rejects_empty_name(parent: Path) -> None:
    assert_rejected(MAGIC + directory(("", regular(b"x"))), parent, "empty entry name")


def test_rejects_name_with_slash(parent: Path, outside: Path) -> None:
    escape = os.path.relpath(outside / "pwned", parent / "out")
    assert_rejected(MAGIC + directory((escape, regular(b"x"))), parent, "containing '/'")
    assert_rejected(MAGIC + directory(("a/b", regular(b"x"))), parent, "containing '/'")
    assert os.listdir(outside) == []


def test_rejects_name_with_nul(parent: Path) -> None:
    assert_rejected(MAGIC + directory(("a\0b", regular())), parent, "NUL")


def test_rejects_overlong_name(parent: Path) -> None:
    name = "n" * (MAX_NAME_LENGTH + 1)
    assert_rejected(MAGIC + directory((name, regular())), parent, "at most 255")
    restore_nar([MAGIC + directory(("n" * MAX_NAME_LENGTH, regular()))], parent / "ok")


def test_rejects_duplicate_entries(parent: Path) -> None:
    nar = MAGIC + directory(("a", regular(b"1")), ("a", regular(b"2")))
    assert_rejected(nar, parent, "duplicate entry 'a'")


def test_rejects_unsorted_entries(parent: Path) -> None:
    nar = MAGIC + directory(("b", regular()), ("a", regular()))
    assert_rejected(nar, parent, "entry 'a' after 'b' \\(not in byte order\\)")
    # byte order, not text order: "\ue000" (EE 80 80) sorts before the byte F0
    unsorted = directory((b"\xf0", regular()), ("\ue000", regular()))
    assert_rejected(MAGIC + unsorted, parent, "not in byte order")


# --- symlinks: stored as they are, never written through ---


def test_rejects_symlink_escape(parent: Path, outside: Path) -> None:
    """A symlink may point anywhere, but nothing may be created through it."""
    through_duplicate = directory(("a", symlink(str(outside))), ("a", directory(("f", regular()))))
    assert_rejected(MAGIC + through_duplicate, parent, "duplicate entry 'a'")
    through_path = directory(("a", symlink(str(outside))), ("a/f", regular(b"pwned")))
    assert_rejected(MAGIC + through_path, parent, "not in byte order|containing '/'")
    nested = directory(("a", symlink(str(outside))), ("b", directory(("../a/f", regular()))))
    assert_rejected(MAGIC + nested, parent, "containing '/'")
    assert os.listdir(outside) == []


def test_symlink_pointing_outside_is_restored_as_is(parent: Path, outside: Path) -> None:
    nar = MAGIC + directory(("a", symlink(str(outside))), ("b", symlink("../../../etc")))
    restore_nar([nar], parent / "out")
    assert os.readlink(parent / "out" / "a") == str(outside)
    assert os.readlink(parent / "out" / "b") == "../../../etc"
    assert b"".join(iter_nar(parent / "out")) == nar


def test_restorer_never_writes_through_a_symlink_it_created(parent: Path, outside: Path) -> None:
    """The second line of defence, below the parser: events that slipped through anyway."""
    attacks = [
        [DirectoryStart(b"a")],  # mkdir where the symlink is
        [FileStart(b"a", False, 0)],  # O_CREAT|O_EXCL|O_NOFOLLOW on the symlink
        [Symlink(b"a", b"x")],  # symlinkat over the symlink
    ]
    for attack in attacks:
        with NarRestorer(parent / "out") as restorer:
            restorer._apply(DirectoryStart(None))
            restorer._apply(Symlink(b"a", os.fsencode(outside)))
            with pytest.raises(FileExistsError):
                for event in attack:
                    restorer._apply(event)
        assert os.listdir(parent) == []
    for name in (b"..", b".", b"", b"a/b", b"../x"):
        with NarRestorer(parent / "out") as restorer:
            restorer._apply(DirectoryStart(None))
            with pytest.raises(NarFormatError, match="refusing to create"):
                restorer._apply(FileStart(name, False, 0))
    assert os.listdir(outside) == []
    assert os.listdir(parent) == []


def test_rejects_empty_symlink_target(parent: Path) -> None:
    assert_rejected(MAGIC + symlink(""), parent, "empty symlink target")


def test_rejects_symlink_target_with_nul(parent: Path) -> None:
    assert_rejected(MAGIC + symlink("/etc\0/passwd"), parent, "NUL")


def test_rejects_overlong_symlink_target(parent: Path) -> None:
    target = "t" * (MAX_SYMLINK_TARGET_LENGTH + 1)
    assert_rejected(MAGIC + symlink(target), parent, "at most 4095")
    restore_nar([MAGIC + symlink("t" * MAX_SYMLINK_TARGET_LENGTH)], parent / "ok")


# --- framing: padding, truncation, trailing bytes ---


def test_rejects_nonzero_string_padding(parent: Path) -> None:
    nar = bytearray(MAGIC + regular(b"x"))
    nar[8 + 13] = 1  # padding of "nix-archive-1"
    assert_rejected(bytes(nar), parent, "non-zero padding after a string")


def test_rejects_nonzero_contents_padding(parent: Path) -> None:
    nar = bytearray(MAGIC + regular(b"abc"))
    nar[nar.index(b"abc") + 3] = 0xFF
    assert_rejected(bytes(nar), parent, "non-zero padding after file contents")


def test_rejects_truncated_input(parent: Path) -> None:
    nar = (VECTORS / "tree.nar").read_bytes()
    for cut in [*range(0, len(nar), 8), 1, 7, 13, len(nar) - 1]:
        if cut:
            assert_rejected(nar[:cut], parent, "truncated")
    huge_file = MAGIC + regular(b"")[:-24] + (1 << 30).to_bytes(8, "little") + b"data"
    assert_rejected(huge_file, parent, "truncated.*expected 1073741820 more bytes")


def test_rejects_trailing_garbage(parent: Path) -> None:
    nar = (VECTORS / "tree.nar").read_bytes()
    assert_rejected(nar + b"\0", parent, "trailing garbage")
    assert_rejected(nar + s(")"), parent, "trailing garbage")
    assert_rejected(nar + nar, parent, "trailing garbage")
    restorer = NarRestorer(parent / "out")
    restorer.feed(nar)
    with pytest.raises(NarFormatError, match="trailing garbage"):
        restorer.feed(b"x")
    restorer.abort()
    assert os.listdir(parent) == []


# --- grammar of regular files ---


def test_rejects_executable_after_contents(parent: Path) -> None:
    late = regular(b"#!")[: -len(s(")"))] + s("executable") + s("") + s(")")
    assert_rejected(MAGIC + late, parent, "unexpected executable file marker")


def test_rejects_non_empty_executable_marker(parent: Path) -> None:
    nar = MAGIC + regular(b"x", executable=True).replace(
        s("executable") + s(""), s("executable") + s("yes")
    )
    assert_rejected(nar, parent, "expected '', found 'yes'")


def test_rejects_repeated_executable_marker(parent: Path) -> None:
    nar = MAGIC + regular(b"x", executable=True).replace(
        s("executable") + s(""), (s("executable") + s("")) * 2
    )
    assert_rejected(nar, parent, "expected 'contents', found 'executable'")


# --- resource exhaustion ---


def _nested(depth: int) -> bytes:
    node = directory()
    for _ in range(depth - 1):
        node = directory(("d", node))
    return MAGIC + node


def test_rejects_excessive_depth(parent: Path) -> None:
    assert_rejected(_nested(MAX_DEPTH + 1), parent, f"deeper than {MAX_DEPTH}")
    restore_nar([_nested(MAX_DEPTH)], parent / "ok")


def test_rejects_file_larger_than_the_limit(parent: Path) -> None:
    nar = MAGIC + regular(bytes(2000))
    assert_rejected(nar, parent, "larger than the limit of 1000 bytes", max_size=1000)
    # the declared size alone is enough: nothing of the file needs to arrive
    header = MAGIC + regular(b"")[:-24] + (2 << 20).to_bytes(8, "little")
    with pytest.raises(NarFormatError, match="file of 2097152 bytes exceeds the NAR size limit"):
        NarParser(max_size=1 << 20).feed(header)


def test_rejects_stream_longer_than_expected(parent: Path, tmp_path: Path) -> None:
    def endless() -> Iterator[bytes]:
        yield MAGIC + regular(b"")[:-24] + ((1 << 20) - 50).to_bytes(8, "little")
        while True:
            yield bytes(1 << 16)

    with pytest.raises(NarFormatError, match="larger than the limit"):
        restore_nar(endless(), parent / "out", max_size=1 << 20)
    assert os.listdir(parent) == []


# --- anything goes: mutated valid NARs ---

_RICH = MAGIC + directory(
    ("bin", directory(("hello", regular(b"#!/bin/sh\necho hi\n", executable=True)))),
    ("empty", directory()),
    ("lib", directory(("libx.so", regular(bytes(range(256)) * 4)))),
    ("link", symlink("bin/hello")),
    ("z\u00e9", regular(b"")),
)
_SEEDS = [(VECTORS / "tree.nar").read_bytes(), (VECTORS / "single-file.nar").read_bytes(), _RICH]


@st.composite
def mutated_nars(draw: st.DrawFn) -> bytes:
    """A valid NAR with 1-3 random edits (positions uniform over the NAR, not near 0)."""
    nar = bytearray(draw(st.sampled_from(_SEEDS)))
    rnd = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 3))):
        at = rnd.randrange(len(nar) + 1)
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "copy"]))
        if kind == "flip" and at < len(nar):
            nar[at] ^= 1 << rnd.randrange(8)
        elif kind == "set" and at < len(nar):
            nar[at] = draw(st.sampled_from([0, 1, 7, 8, 0x2F, 0x2E, 0xFF, rnd.randrange(256)]))
        elif kind == "truncate":
            del nar[at:]
        elif kind == "insert":
            nar[at:at] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "delete":
            del nar[at : at + rnd.randrange(1, 25)]
        elif kind == "copy":  # e.g. a token or an entry repeated somewhere else
            start = rnd.randrange(len(nar) + 1)
            nar[at:at] = nar[start : start + rnd.randrange(8, 65)]
    return bytes(nar)


@given(mutated_nars(), st.integers(1, 64))
@settings(max_examples=500, deadline=None)
def test_mutated_nar_is_restored_exactly_or_rejected_cleanly(nar: bytes, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp)
        chunks = [nar[i : i + chunk] for i in range(0, len(nar), chunk)]
        try:
            restore_nar(chunks, parent / "out", max_size=1 << 20)
        except NarFormatError as exc:
            event(f"rejected: {' '.join(str(exc).split()[:3])}")
            assert os.listdir(parent) == []
        else:
            event("restored")
            assert os.listdir(parent) == ["out"]
            assert b"".join(iter_nar(parent / "out")) == nar
