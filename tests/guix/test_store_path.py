"""Store path parsing, name rules (checkStoreName) and makeStorePath for `source` items."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.errors import StorePathError
from p2pcache.guix import nix32
from p2pcache.guix.store_path import (
    StorePath,
    check_store_name,
    compress_hash,
    parse_basename,
    parse_store_path,
    source_store_path,
)

HASH = "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn"


def test_parse_full_path():
    sp = parse_store_path(f"/gnu/store/{HASH}-p2p-test-tree")
    assert sp == StorePath("/gnu/store", HASH, "p2p-test-tree")
    assert sp.basename == f"{HASH}-p2p-test-tree"
    assert str(sp) == f"/gnu/store/{HASH}-p2p-test-tree"


def test_parse_with_another_store_dir():
    sp = parse_store_path(f"/nix/store/{HASH}-x", store_dir="/nix/store")
    assert sp.store_dir == "/nix/store"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (f"/nix/store/{HASH}-x", "not under"),
        (f"/gnu/store/{HASH}-x/bin/sh", "directly under"),
        (f"/gnu/store/{HASH}", "form"),
        (f"/gnu/store/{HASH[:-1]}-x", "32 nix-base32"),
        (f"/gnu/store/{HASH[:-1]}e-x", "32 nix-base32"),
        (f"/gnu/store/{HASH}-", "empty"),
        (f"/gnu/store/{HASH}-.hidden", "dot"),
        (f"/gnu/store/{HASH}-a b", "forbidden"),
        (f"/gnu/store/{HASH}-caf\u00e9", "forbidden"),
        (f"/gnu/store/{HASH}-" + "a" * 212, "211"),
        ("/gnu/store/../etc/passwd", "directly under"),
        ("gnu/store/x", "not under"),
    ],
)
def test_rejects_invalid_paths_with_a_reason(path, problem):
    with pytest.raises(StorePathError, match=problem):
        parse_store_path(path)


def test_name_rules_accept_all_allowed_characters():
    check_store_name("Az09+-._?=")
    check_store_name("a" * 211)


def test_store_dir_must_be_clean():
    for bad in ["gnu/store", "/gnu/store/", "/gnu/../store", "/"]:
        with pytest.raises(StorePathError):
            parse_store_path(f"{bad}/{HASH}-x", store_dir=bad)


def test_source_store_path_matches_vectors(vectors_dir):
    """The vectors' paths were reproduced by Nix's own daemon code (spec §5)."""
    vectors = json.loads((vectors_dir / "nar-vectors.json").read_text())
    for nar in vectors["nars"].values():
        expected = nar["store_path_if_added_as_source"]
        name = parse_store_path(expected).name
        got = source_store_path(bytes.fromhex(nar["nar_sha256_hex"]), name)
        assert str(got) == expected


def test_compress_hash_folds_by_position():
    digest = bytes(range(32))
    folded = compress_hash(digest, 20)
    assert folded[0] == 0 ^ 20
    assert folded[11] == 11 ^ 31
    assert folded[12] == 12


@given(
    st.binary(min_size=20, max_size=20),
    st.from_regex(r"[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}", fullmatch=True),
)
def test_basename_round_trip(raw_hash, name):
    basename = f"{nix32.encode(raw_hash)}-{name}"
    assert parse_basename(basename).basename == basename
