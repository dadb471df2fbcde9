"""The test store generator: a store that looks like a real Guix store, and a matching database.

Nix's own checks of the same stores are in tests/guix/test_store_db.py (interop).
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import zlib
from pathlib import Path

import pytest

from p2pcache.guix.nar import dump_nar, iter_nar
from p2pcache.guix.store_path import parse_store_path, source_store_path
from p2pcache.testing import TestStore, add_items, generate_test_store, remove_test_store
from p2pcache.testing.derivation import text_store_path

# A hash part in a NAR follows the `/` of a store path in text, or the length field (ending in
# a zero byte) of a file name such as a debug directory's `<hash>-<name>`.
HASH_IN_NAR = re.compile(rb"[/\0]([0-9a-df-np-sv-z]{32})-")


def nar_bytes(path: Path) -> bytes:
    return b"".join(iter_nar(path))


def known_hash_parts(store: TestStore) -> set[str]:
    """Hash parts of every item and every derivation output, built or not."""
    paths = [i.path for i in store.items]
    paths += [p for outputs in store.derivation_outputs.values() for p in outputs.values()]
    return {parse_store_path(p, store.store_dir).hash_part for p in paths}


def mentioned_hash_parts(store: TestStore, path: str, known: set[str]) -> set[str]:
    """Hash parts of store items that appear in the item's NAR (the daemon's reference scan)."""
    found = {m.decode() for m in HASH_IN_NAR.findall(nar_bytes(store.real_path(path)))}
    return found & known


def hash_parts(store: TestStore, paths: tuple[str, ...]) -> set[str]:
    return {parse_store_path(p, store.store_dir).hash_part for p in paths}


def test_generates_exactly_the_requested_items(test_store, small_test_store):
    assert len(test_store.items) == 300
    assert len(small_test_store.items) == 20
    assert [i.id for i in test_store.items] == list(range(1, 301))
    assert sorted(os.listdir(test_store.store_root)) == sorted(
        parse_store_path(i.path).basename for i in test_store.items
    )


def test_every_row_holds_the_hash_and_size_of_the_items_nar(test_store):
    for item in test_store.items:
        summary = dump_nar(test_store.real_path(item.path))
        assert (summary.sha256, summary.size) == (item.nar_sha256, item.nar_size), item.path


def test_references_are_the_store_paths_written_in_the_item(test_store):
    """As the daemon finds them: scanning the NAR for the hash parts of other items."""
    self_referring = 0
    known = known_hash_parts(test_store)
    for item in test_store.items:
        mentioned = mentioned_hash_parts(test_store, item.path, known)
        refs = hash_parts(test_store, item.references)
        if item.path.endswith(".drv"):
            # A derivation also names its outputs, which are not references.
            outputs = hash_parts(
                test_store, tuple(test_store.derivation_outputs[item.path].values())
            )
            assert refs <= mentioned and mentioned - refs <= outputs, item.path
        else:
            assert mentioned == refs, item.path
        self_referring += item.path in item.references
        assert all(test_store.by_path(r).id <= item.id for r in item.references), item.path
    assert self_referring > 20


def test_derivations_name_their_outputs_and_outputs_name_their_derivation(test_store):
    valid = {i.path for i in test_store.items}
    unbuilt = 0
    for drv in test_store.derivations():
        text = test_store.real_path(drv.path).read_text()
        assert text.startswith('Derive([("')
        outputs = test_store.derivation_outputs[drv.path]
        name = parse_store_path(drv.path).name.removesuffix(".drv")
        for output, path in outputs.items():
            assert f'("{output}","{path}","","")' in text
            expected = name if output == "out" else f"{name}-{output}"
            assert parse_store_path(path).name == expected
        built = [p for p in outputs.values() if p in valid]
        assert built in ([], list(outputs.values()))
        unbuilt += not built
        for path in built:
            assert test_store.by_path(path).deriver == drv.path
    assert unbuilt >= 1
    derived = [i for i in test_store.items if i.deriver]
    assert all(i.deriver in test_store.derivation_outputs for i in derived)
    assert len(derived) > 80


def test_sources_and_texts_have_the_paths_the_daemon_gives_them(test_store):
    for item in test_store.items:
        if item.deriver is not None:
            continue
        name = parse_store_path(item.path).name
        if name.endswith((".drv", "-builder")):
            text = test_store.real_path(item.path).read_bytes()
            assert item.path == text_store_path(text, name, item.references)
        else:
            assert item.references == ()
            assert item.path == source_store_path(item.nar_sha256, name).path


def test_names_look_like_guix_packages(test_store):
    names = {parse_store_path(i.path).name for i in test_store.items}
    assert {"hello-2.12.2", "glibc-2.41", "hello-2.12.2.drv", "glibc-2.41.tar.gz"} <= names
    assert any(n.endswith("-debug") for n in names)
    assert any(n.startswith("python-") for n in names)


def test_files_are_of_every_kind_and_read_only_like_a_store(test_store):
    seen: dict[str, int] = dict.fromkeys(
        [
            "executable",
            "empty file",
            "empty dir",
            "relative symlink",
            "symlink to another item",
            "deep dir",
            "big file",
            "single-file item",
            "symlink item",
        ],
        0,
    )
    for top in test_store.store_root.iterdir():
        st = top.lstat()
        if stat.S_ISREG(st.st_mode):
            seen["single-file item"] += 1
        elif stat.S_ISLNK(st.st_mode):
            seen["symlink item"] += 1
        for path in [top, *top.rglob("*")] if stat.S_ISDIR(st.st_mode) else [top]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                kind = "symlink to another item" if target.startswith("/gnu/store/") else None
                seen[kind or "relative symlink"] += 1
                continue
            assert st.st_mtime == 1, path
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                assert mode == 0o555, path
                seen["empty dir"] += not any(path.iterdir())
                seen["deep dir"] += len(path.relative_to(top).parts) >= 6
            else:
                assert mode in (0o444, 0o555), path
                seen["executable"] += mode == 0o555
                seen["empty file"] += st.st_size == 0
                seen["big file"] += st.st_size >= 1 << 20
    assert all(seen.values()), seen


def test_big_files_are_compressible_but_not_trivial(test_store):
    big = [
        p
        for p in test_store.store_root.rglob("*-big.so.1")
        if not p.is_symlink() and p.stat().st_size >= 1 << 20
    ]
    assert 3 <= len(big) <= 10
    for path in big:
        assert path.stat().st_size <= 20 << 20
        with open(path, "rb") as f:
            head = f.read(1 << 20)
        ratio = len(head) / len(zlib.compress(head, 1))
        assert 1.3 < ratio < 10, (path, ratio)
        assert head.count(0) < len(head) // 10


def test_the_same_seed_gives_the_same_store(tmp_path):
    a = generate_test_store(tmp_path / "a", items=25, seed=5, max_file_size=1 << 16)
    b = generate_test_store(tmp_path / "b", items=25, seed=5, max_file_size=1 << 16)
    c = generate_test_store(tmp_path / "c", items=25, seed=6, max_file_size=1 << 16)
    assert a.items == b.items
    assert a.derivation_outputs == b.derivation_outputs
    assert {i.path for i in a.items}.isdisjoint(i.path for i in c.items[1:])
    for root in (a.root, b.root, c.root):
        remove_test_store(root)


def test_small_stores_stay_small(small_test_store):
    assert small_test_store.total_nar_size < 2 << 20


def test_database_has_guix_schema_in_wal_mode(small_test_store):
    db = small_test_store.db_path
    assert (db.parent / "schema").read_text() == "7"
    conn = sqlite3.connect(db)
    try:
        objects = set(conn.execute("select type, name from sqlite_master"))
        columns = [r[1] for r in conn.execute("pragma table_info(ValidPaths)")]
        (mode,) = conn.execute("pragma journal_mode").fetchone()
    finally:
        conn.close()
    assert objects >= {
        ("table", "ValidPaths"),
        ("table", "Refs"),
        ("table", "DerivationOutputs"),
        ("table", "FailedPaths"),
        ("index", "IndexReferrer"),
        ("index", "IndexReference"),
        ("index", "IndexDerivationOutputs"),
        ("trigger", "DeleteSelfRefs"),
    }
    assert columns == ["id", "path", "hash", "registrationTime", "deriver", "narSize"]
    assert mode == "wal"


def test_store_dir_is_a_parameter(tmp_path):
    store = generate_test_store(tmp_path / "nix", items=12, store_dir="/nix/store")
    assert all(i.path.startswith("/nix/store/") for i in store.items)
    assert store.real_path(store.items[0].path).exists()
    remove_test_store(store.root)


def test_added_items_get_larger_ids_and_build_on_old_ones(small_test_store):
    old = list(small_test_store.items)
    new = add_items(small_test_store, 15, seed=9)
    assert len(new) == 15
    assert small_test_store.items == old + new
    assert min(i.id for i in new) > max(i.id for i in old)
    assert min(i.registration_time for i in new) > max(i.registration_time for i in old)
    old_paths = {i.path for i in old}
    assert any(set(i.references) & old_paths for i in new)
    assert not old_paths & {i.path for i in new}
    conn = sqlite3.connect(small_test_store.db_path)
    try:
        assert conn.execute("select count(*) from ValidPaths").fetchone() == (35,)
    finally:
        conn.close()
    for item in new:
        assert dump_nar(small_test_store.real_path(item.path)).sha256 == item.nar_sha256


def test_remove_test_store_removes_read_only_trees_only_of_stores(tmp_path):
    store = generate_test_store(tmp_path / "s", items=8)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.root / "link-out")
    remove_test_store(store.root)
    assert not store.root.exists()
    assert outside.is_dir()
    with pytest.raises(ValueError, match="does not look like"):
        remove_test_store(outside)
    assert outside.is_dir()
