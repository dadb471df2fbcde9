"""Baking: a store item becomes a verified chunked zstd NAR in the cache.

The NAR is written from the store tree, cut into protocol chunks, compressed on a thread pool,
and hashed on the way; the result is committed only when its NarHash and NarSize are what the
Guix daemon recorded. A mismatch means the store copy is corrupt (or changed under us): the
item is refused and nothing becomes visible. This is blocking work: callers run it in a thread,
never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from p2pcache.cache.chunk_table import ChunkTable
from p2pcache.cache.chunked_zstd import ChunkedZstdWriter
from p2pcache.cache.nar_store import NarStore
from p2pcache.errors import P2PCacheError
from p2pcache.guix import nix32
from p2pcache.guix.nar import NarSummary, iter_nar


class CorruptStoreItem(P2PCacheError):
    """A store item's bytes do not hash to the NarHash the Guix daemon recorded for it."""


@dataclass(frozen=True, slots=True)
class BakeResult:
    nar_file: str
    table: ChunkTable
    summary: NarSummary


def bake_stream(
    nar_chunks: Iterable[bytes],
    store: NarStore,
    hash_part: str,
    *,
    expected_sha256: bytes,
    expected_size: int | None,
    what: str,
    level: int = 3,
    executor: Executor | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BakeResult:
    """Compress a NAR byte stream into the cache, committing only if it hashes as expected."""
    with store.writing() as pending:
        writer = ChunkedZstdWriter(pending.file, level=level, executor=executor)
        try:
            for chunk in nar_chunks:
                writer.write(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
            table, summary = writer.finish()
        except BaseException:
            writer.abort()
            raise
        if summary.sha256 != expected_sha256 or (
            expected_size is not None and summary.size != expected_size
        ):
            raise CorruptStoreItem(
                f"{what} does not match the Guix database: its NAR hashes to "
                f"sha256:{nix32.encode(summary.sha256)} ({summary.size} bytes), the database "
                f"says sha256:{nix32.encode(expected_sha256)} ({expected_size} bytes); "
                "the store item may be corrupt (try: guix gc --verify=contents)"
            )
        name = store.commit(pending, hash_part)
    return BakeResult(name, table, summary)


def bake_store_item(
    source: Path,
    store: NarStore,
    hash_part: str,
    *,
    expected_sha256: bytes,
    expected_size: int | None,
    level: int = 3,
    executor: Executor | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BakeResult:
    """Bake the store item whose files are at `source` (its on-disk location)."""
    return bake_stream(
        iter_nar(source),
        store,
        hash_part,
        expected_sha256=expected_sha256,
        expected_size=expected_size,
        what=str(source),
        level=level,
        executor=executor,
        on_progress=on_progress,
    )
