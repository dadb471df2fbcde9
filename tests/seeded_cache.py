"""A cache with baked, signed items, built from a generated store (for peer-side tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2pcache.cache.baker import bake_store_item
from p2pcache.cache.index import CacheIndex
from p2pcache.cache.nar_store import NarStore
from p2pcache.guix.narinfo import render_signature_line, render_signed_part
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import GuixSecretKey
from p2pcache.publisher import new_item_from_store
from p2pcache.testing import TestStore


@dataclass
class SeededCache:
    index: CacheIndex
    nar_store: NarStore
    hash_parts: list[str]


async def seed_cache(
    data_dir: Path,
    store: TestStore,
    key: GuixSecretKey,
    items: list,
    host: str = "seed",
    *,
    signed: bool = True,
) -> SeededCache:
    """Bake `items` (StoreItemInfo of `store`) into a new cache signed with `key` (or, with
    `signed=False`, left unsigned, as `p2pcache publish` leaves them)."""
    index = CacheIndex(data_dir / "index.sqlite")
    await index.open()
    nar_store = NarStore(data_dir / "nar")
    nar_store.prepare()
    hash_parts = []
    for info in items:
        new = new_item_from_store(info)
        await index.add_items([new])
        signed_part = render_signed_part(
            new.store_path, new.nar_hash, new.nar_size, new.references, new.deriver
        )
        if signed:
            await index.set_signature(
                new.hash_part,
                signed_part,
                render_signature_line(signature_field(signed_part, key, host)),
            )
        result = bake_store_item(
            store.real_path(info.path),
            nar_store,
            new.hash_part,
            expected_sha256=info.nar_sha256,
            expected_size=info.nar_size,
        )
        table = result.table
        await index.mark_baked(
            new.hash_part, result.nar_file, table.file_size, table.encode(), table.root
        )
        hash_parts.append(new.hash_part)
    return SeededCache(index, nar_store, hash_parts)
