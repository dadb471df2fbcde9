"""File trees described in memory and written the way the store keeps them.

The generator describes each store item as a tree of `Regular`, `Symlink` and `Directory`
nodes, then writes it with the daemon's canonical metadata: files 0444 (0555 when executable),
directories 0555, modification time 1 (one second into the epoch), symlinks untouched. Big
files are described by a `Filler` and produced while they are written, so a 20 MB file is
never held in memory.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

STORE_MTIME = 1  # what the daemon sets on everything in the store (canonicaliseTimestamp...)
_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class Filler:
    """`size` bytes of compressible, never-zero content, determined by `seed`.

    Three blocks in four are slices of a text-like dictionary (so zstd shrinks them a lot, as
    it does real libraries and documentation); one in four is random bytes (as in machine code
    or compressed data), so the file is not trivially compressible either.
    """

    seed: int
    size: int

    def chunks(self) -> Iterator[bytes]:
        """The content, in pieces of at most 1 MiB."""
        rng = random.Random(self.seed)
        dictionary = text_like(rng, 1 << 16)
        remaining = self.size
        while remaining:
            blocks = []
            for _ in range(min(256, -(-remaining // _BLOCK))):
                if rng.random() < 0.25:
                    blocks.append(rng.randbytes(_BLOCK))
                else:
                    start = rng.randrange(len(dictionary) - _BLOCK)
                    blocks.append(dictionary[start : start + _BLOCK])
            piece = b"".join(blocks)[:remaining]
            remaining -= len(piece)
            yield piece


def text_like(rng: random.Random, size: int) -> bytes:
    """`size` bytes of lower-case words, spaces and line breaks (compressible, not constant)."""
    vocabulary = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 11))) for _ in range(400)
    ]
    out: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(vocabulary, k=rng.randint(3, 12))) + "\n"
        out.append(line)
        length += len(line)
    return "".join(out).encode()[:size]


@dataclass(frozen=True, slots=True)
class Regular:
    """A regular file; `data` is its bytes or a Filler for big generated content."""

    data: bytes | Filler
    executable: bool = False

    @property
    def size(self) -> int:
        return self.data.size if isinstance(self.data, Filler) else len(self.data)


@dataclass(frozen=True, slots=True)
class Symlink:
    target: str


@dataclass(frozen=True, slots=True)
class Directory:
    entries: Mapping[str, Node]


Node = Regular | Symlink | Directory


def write_tree(path: Path, node: Node) -> None:
    """Create `node` at `path` (which must not exist) with the store's canonical metadata."""
    if isinstance(node, Symlink):
        os.symlink(node.target, path)
    elif isinstance(node, Regular):
        with open(path, "xb") as f:
            if isinstance(node.data, Filler):
                for chunk in node.data.chunks():
                    f.write(chunk)
            else:
                f.write(node.data)
        os.chmod(path, 0o555 if node.executable else 0o444)
        os.utime(path, (STORE_MTIME, STORE_MTIME))
    else:
        os.mkdir(path)
        for name, child in node.entries.items():
            write_tree(path / name, child)
        os.chmod(path, 0o555)
        os.utime(path, (STORE_MTIME, STORE_MTIME))


def tree_size(node: Node) -> int:
    """Bytes of file content in `node` (roughly what it costs on disk)."""
    if isinstance(node, Regular):
        return node.size
    if isinstance(node, Directory):
        return sum(tree_size(child) for child in node.entries.values())
    return 0


def remove_read_only_tree(path: Path) -> None:
    """Delete a tree whose directories are read-only (as the store's are).

    Directories are made writable first, without ever following a symlink, so that nothing
    outside `path` is touched.
    """
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, _ in os.walk(path):
            os.chmod(dirpath, 0o755)
            # os.walk lists symlinks to directories among dirnames; never chmod through them.
            dirnames[:] = [
                d for d in dirnames if stat.S_ISDIR(os.lstat(os.path.join(dirpath, d)).st_mode)
            ]
        shutil.rmtree(path)
    else:
        path.unlink()
