"""Compressed NAR files on disk: named by store hash, written atomically, never half visible.

A file is written under `<data>/nar/.tmp/`, fsynced, renamed to `<data>/nar/<2 chars>/<hash>.zst`
(same filesystem, so the rename is atomic), and the directory is fsynced; only then does the
index learn of it. A crash at any point leaves either no file, or a complete file the index
does not know yet (collected by `cache gc`), never a half file the endpoint could serve.
Names are derived from validated nix32 hash parts only, so no request can name a path outside.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from p2pcache.cache.chunk_table import ChunkTable
from p2pcache.cache.chunked_zstd import iter_decompressed
from p2pcache.errors import P2PCacheError
from p2pcache.guix.store_path import check_hash_part

_NAME = re.compile(r"[0-9a-df-np-sv-z]{2}/[0-9a-df-np-sv-z]{32}\.zst\Z")


class NarStoreError(P2PCacheError):
    """A cached NAR file cannot be written, found or removed."""


def _process_alive(pid_text: str) -> bool:
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nar_file_name(hash_part: str) -> str:
    """The index's name for an item's compressed NAR, relative to the store root."""
    check_hash_part(hash_part)
    return f"{hash_part[:2]}/{hash_part}.zst"


@dataclass
class PendingFile:
    """A NAR being written: `file` is open for writing at `path` under the temp directory."""

    file: BinaryIO
    path: Path


class NarStore:
    """The directory of compressed NARs (`<data dir>/nar`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temps = root / ".tmp"
        # One temp directory per process: `p2pcache publish` may bake while `serve` runs.
        self.temp_dir = self.temps / str(os.getpid())

    def prepare(self) -> None:
        """Create the directories and remove temp files left by processes that died."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.temps.iterdir():
            if leftover != self.temp_dir and not _process_alive(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)

    def path_of(self, name: str) -> Path:
        if not _NAME.match(name):
            raise NarStoreError(f"{name!r} is not a cached NAR name")
        return self.root / name

    @contextlib.contextmanager
    def writing(self) -> Iterator[PendingFile]:
        """A temp file to write a NAR into; removed unless `commit` moved it into place."""
        path = self.temp_dir / f"{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        pending = PendingFile(os.fdopen(fd, "wb", buffering=1 << 20), path)
        try:
            yield pending
        finally:
            if not pending.file.closed:
                pending.file.close()
            with contextlib.suppress(FileNotFoundError):
                pending.path.unlink()

    def commit(self, pending: PendingFile, hash_part: str) -> str:
        """fsync the file, rename it into place, fsync the directory; returns its name."""
        name = nar_file_name(hash_part)
        pending.file.flush()
        os.fsync(pending.file.fileno())
        pending.file.close()
        target = self.root / name
        target.parent.mkdir(exist_ok=True)
        os.replace(pending.path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return name

    def open(self, name: str) -> int:
        """An O_RDONLY descriptor of a cached NAR (the caller closes it)."""
        try:
            return os.open(self.path_of(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NarStoreError(f"cached NAR {name} is missing from {self.root}") from None

    def read_nar(self, name: str, table: ChunkTable) -> Iterator[bytes]:
        """The uncompressed NAR of a cached file, chunk by chunk, each checked against its
        digest in `table`. The name is checked now; the file is read as the iterator is,
        in blocking reads: iterate it in a thread (`iterate_in_thread`)."""
        return _read_decompressed(self.path_of(name), table)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(name).unlink()

    def size_of(self, name: str) -> int:
        return self.path_of(name).stat().st_size

    def iter_names(self, older_than: float | None = None) -> Iterator[str]:
        """Every cached NAR file on disk, optionally only those last modified before a time.

        `cache gc` removes files the index does not know, but only old ones: a running node
        renames a freshly baked file into place a moment before the index learns of it.
        """
        for sub in sorted(self.root.iterdir()):
            if sub.name == ".tmp" or not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                name = f"{sub.name}/{f.name}"
                if _NAME.match(name) and (older_than is None or f.stat().st_mtime < older_than):
                    yield name


def _read_decompressed(path: Path, table: ChunkTable) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter_decompressed(f, table)
