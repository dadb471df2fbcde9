"""Baking store items: verified against the Guix database, nothing visible when corrupt."""

import io
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from p2pcache.cache.baker import CorruptStoreItem, bake_store_item
from p2pcache.cache.chunked_zstd import iter_decompressed
from p2pcache.cache.nar_store import NarStore
from p2pcache.guix.nar import dump_nar


def largest(store):
    return max(store.items, key=lambda i: i.nar_size)


def test_bake_matches_the_database_and_decodes_to_the_nar(small_test_store, tmp_path):
    item = largest(small_test_store)
    nar_store = NarStore(tmp_path / "nar")
    nar_store.prepare()
    source = small_test_store.real_path(item.path)
    hash_part = source.name.partition("-")[0]
    progress = []
    with ThreadPoolExecutor(2) as pool:
        result = bake_store_item(
            source,
            nar_store,
            hash_part,
            expected_sha256=item.nar_sha256,
            expected_size=item.nar_size,
            executor=pool,
            on_progress=progress.append,
        )
    assert result.summary.sha256 == item.nar_sha256
    assert sum(progress) == item.nar_size
    nar = io.BytesIO()
    dump_nar(source, nar)
    blob = nar_store.path_of(result.nar_file).read_bytes()
    assert len(blob) == result.table.file_size
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == nar.getvalue()
    assert b"".join(iter_decompressed(io.BytesIO(blob), result.table)) == nar.getvalue()


def test_corrupt_store_item_is_refused_and_leaves_nothing(small_test_store, tmp_path):
    item = largest(small_test_store)
    source = small_test_store.real_path(item.path)
    files = [p for p in [source, *source.rglob("*")] if p.is_file() and not p.is_symlink()]
    victim = files[0]
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes() + b"tampered")
    nar_store = NarStore(tmp_path / "nar")
    nar_store.prepare()
    with pytest.raises(CorruptStoreItem, match="does not match the Guix database"):
        bake_store_item(
            source,
            nar_store,
            source.name.partition("-")[0],
            expected_sha256=item.nar_sha256,
            expected_size=item.nar_size,
        )
    assert list(nar_store.iter_names()) == []
    assert list(nar_store.temps.rglob("*.part")) == []
