"""File trees for the NAR tests: a small description language, hypothesis strategies, helpers.

A tree is a `dict` (a directory: name -> node), a `RegularFile` or a `Link`. Names are str and
become their UTF-8 bytes on disk, so non-ASCII names are covered without producing names the
filesystem would refuse.
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from hypothesis import strategies as st


@dataclass(frozen=True)
class RegularFile:
    contents: bytes = b""
    executable: bool = False


@dataclass(frozen=True)
class Link:
    target: str


Node = Union[RegularFile, Link, dict[str, "Node"]]  # noqa: UP007 (a runtime alias)


def build_tree(node: Node, path: Path) -> None:
    """Create `node` at `path` (which must not exist)."""
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            build_tree(child, path / name)
    elif isinstance(node, RegularFile):
        path.write_bytes(node.contents)
        path.chmod(0o755 if node.executable else 0o644)
    else:
        os.symlink(node.target, path)


def read_tree(path: Path) -> Node:
    """The tree at `path`, as restored (modes other than the owner x bit are not recorded)."""
    st_ = path.lstat()
    if stat.S_ISLNK(st_.st_mode):
        return Link(os.readlink(path))
    if stat.S_ISREG(st_.st_mode):
        return RegularFile(path.read_bytes(), bool(st_.st_mode & stat.S_IXUSR))
    return {child.name: read_tree(child) for child in path.iterdir()}


def remove_tree(path: Path) -> None:
    """Delete a tree even when it is read-only (as restored NARs are)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    path.chmod(0o700)
    for child in path.iterdir():
        remove_tree(child)
    path.rmdir()


def features(node: Node, depth: int = 0) -> set[str]:
    """What a drawn tree exercises, for hypothesis.event (shown by --hypothesis-show-statistics)."""
    if isinstance(node, RegularFile):
        found = {"executable"} if node.executable else set()
        return found | ({"large file"} if len(node.contents) >= 1 << 20 else set())
    if isinstance(node, Link):
        return {"symlink"}
    found = {"empty directory"} if not node else set()
    if depth >= 10:
        found.add("depth >= 10")
    for name, child in node.items():
        if not name.isascii():
            found.add("non-ASCII name")
        found |= features(child, depth + 1)
    return found


def pseudo_random_bytes(seed: int, size: int) -> bytes:
    """Incompressible, reproducible contents for large files (cheaper than st.binary)."""
    return random.Random(seed).randbytes(size)


names = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)

ascii_names = st.text(alphabet="abcABC019-_.+ ", min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)

symlink_targets = st.one_of(
    st.sampled_from(["/etc/passwd", "../../outside", ".", "..", "/", "dangling", "a/b/c"]),
    st.text(
        alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
        max_size=40,
    ),
)

small_files = st.builds(RegularFile, st.binary(max_size=300), st.booleans())

large_files = st.builds(
    RegularFile,
    st.builds(pseudo_random_bytes, st.integers(0, 2**32), st.integers(1 << 20, 3 << 20)),
    st.booleans(),
)

leaves = st.one_of(small_files, st.builds(Link, symlink_targets))


def deep_chain(depth: int) -> Node:
    """`depth` nested directories ending in a file."""
    node: Node = RegularFile(b"bottom\n")
    for level in range(depth):
        node = {f"d{level}": node}
    return node


directories = st.recursive(
    st.dictionaries(st.one_of(ascii_names, names), leaves, max_size=4),
    lambda children: st.dictionaries(
        st.one_of(ascii_names, names), st.one_of(leaves, children), max_size=4
    ),
    max_leaves=16,
)


@st.composite
def trees(draw: st.DrawFn, *, allow_large: bool = True) -> Node:
    """A NAR root: mostly directories (with an occasional deep chain or large file)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(leaves)
    tree = dict(draw(directories))
    if draw(st.integers(0, 4)) == 0:
        tree["deep"] = deep_chain(draw(st.integers(10, 60)))
    if allow_large and draw(st.integers(0, 5)) == 0:
        tree["large"] = draw(large_files)
    return tree
