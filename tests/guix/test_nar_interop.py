"""NAR bytes against implementations we did not write: Nix's nix-store, Guix's serializer
(through the Guile oracle), and the vectors the oracle produced.

Running nix-store here: `nix-store --dump PATH > out.nar` and `nix-store --restore DEST < in.nar`
are the only operations used, and they never open a store (nix-store.cc skips `openStore()` for
them), so no daemon, no /nix and no root are needed. Nix still reads its configuration at start,
so the tests point NIX_CONF_DIR, NIX_STATE_DIR, NIX_STORE_DIR, NIX_LOG_DIR, HOME and
XDG_CONFIG_HOME into an empty temporary directory: the host's /etc/nix/nix.conf cannot change
the result and nothing is written outside the test's directory (checked with strace on Nix 2.8:
only the config files are looked up). By hand:

    env NIX_CONF_DIR=/tmp/n NIX_STATE_DIR=/tmp/n NIX_STORE_DIR=/tmp/n nix-store --dump PATH

The oracle is `tests/tools/guix-narinfo-oracle nar PATH` (Guile 3, Guix's writer logic).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from p2pcache.guix.nar import dump_nar, iter_nar
from p2pcache.guix.nar_restore import restore_nar
from tests.guix.nar_trees import (
    Link,
    Node,
    RegularFile,
    build_tree,
    deep_chain,
    features,
    pseudo_random_bytes,
    read_tree,
    remove_tree,
    trees,
)

pytestmark = pytest.mark.interop

TREE_VECTOR: Node = {
    "README": RegularFile(b"Hello, Guix!\n"),
    "bin": {"hello": RegularFile(b"#!/bin/sh\necho hi\n", executable=True)},
    "empty": RegularFile(b""),
    "run": Link("bin/hello"),
}


def nar_of(path: Path) -> bytes:
    return b"".join(iter_nar(path))


class NixStore:
    """nix-store --dump / --restore in a hermetic environment (see the module docstring)."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "NIX_CONF_DIR": str(home / "conf"),
            "NIX_STATE_DIR": str(home / "state"),
            "NIX_STORE_DIR": str(home / "store"),
            "NIX_LOG_DIR": str(home / "log"),
        }

    def dump(self, path: Path) -> bytes:
        return self._run("--dump", str(path)).stdout

    def restore(self, nar: bytes, dest: Path) -> None:
        self._run("--restore", str(dest), stdin=nar)

    def _run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [self.binary, *args], input=stdin, capture_output=True, env=self.env, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result


@pytest.fixture(scope="module")
def nix(nix_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NixStore]:
    home = tmp_path_factory.mktemp("nix-home")
    yield NixStore(nix_store, home)
    assert sorted(os.listdir(home)) == [], "nix-store wrote into its state directories"


# --- the vectors (made by the Guile oracle) ---


@pytest.fixture(scope="module")
def nar_vectors(vectors_dir: Path) -> dict[str, dict[str, object]]:
    return json.loads((vectors_dir / "nar-vectors.json").read_text())["nars"]


def test_single_file_vector(
    nar_vectors: dict[str, dict[str, object]], vectors_dir: Path, tmp_path: Path
) -> None:
    vector = nar_vectors["single-file"]
    build_tree(RegularFile(b"Hello, Guix!\n"), tmp_path / "f")
    nar = nar_of(tmp_path / "f")
    assert nar == (vectors_dir / "single-file.nar").read_bytes()
    assert nar == base64.b64decode(str(vector["nar_base64"]))
    summary = dump_nar(tmp_path / "f")
    assert summary.nar_hash == vector["nar_hash"]
    assert summary.sha256.hex() == vector["nar_sha256_hex"]
    assert summary.size == vector["nar_size"]


def test_tree_vector(
    nar_vectors: dict[str, dict[str, object]], vectors_dir: Path, tmp_path: Path
) -> None:
    vector = nar_vectors["tree"]
    build_tree(TREE_VECTOR, tmp_path / "tree")
    nar = nar_of(tmp_path / "tree")
    assert nar == (vectors_dir / "tree.nar").read_bytes()
    assert nar == base64.b64decode(str(vector["nar_base64"]))
    summary = dump_nar(tmp_path / "tree")
    assert (summary.nar_hash, summary.size) == (vector["nar_hash"], vector["nar_size"])
    restored = restore_nar([nar], tmp_path / "restored")
    assert restored == summary
    assert read_tree(tmp_path / "restored") == TREE_VECTOR


# --- Nix ---


def test_nix_reads_and_writes_the_tree_vector(nix: NixStore, vectors_dir: Path, tmp_path: Path):
    build_tree(TREE_VECTOR, tmp_path / "tree")
    assert nix.dump(tmp_path / "tree") == (vectors_dir / "tree.nar").read_bytes()


@given(trees())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_our_nar_is_byte_identical_to_nix_store_dump(nix: NixStore, tree: Node) -> None:
    for feature in features(tree):
        event(feature)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        build_tree(tree, src)
        ours = nar_of(src)
        assert ours == nix.dump(src)
        summary = dump_nar(src)
        assert summary.size == len(ours)


@given(trees())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_nix_restores_our_nar_to_the_same_bytes(nix: NixStore, tree: Node) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(tree, Path(tmp) / "src")
        ours = nar_of(Path(tmp) / "src")
        nix.restore(ours, Path(tmp) / "by-nix")
        assert nix.dump(Path(tmp) / "by-nix") == ours
        assert nar_of(Path(tmp) / "by-nix") == ours


@given(trees())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_we_restore_nix_nar_to_the_same_bytes(nix: NixStore, tree: Node) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(tree, Path(tmp) / "src")
        theirs = nix.dump(Path(tmp) / "src")
        summary = restore_nar([theirs], Path(tmp) / "by-us")
        assert summary.size == len(theirs)
        assert nar_of(Path(tmp) / "by-us") == theirs
        assert nix.dump(Path(tmp) / "by-us") == theirs
        remove_tree(Path(tmp) / "by-us")


def test_large_and_deep_tree_against_nix(nix: NixStore, tmp_path: Path) -> None:
    """A fixed case of what hypothesis draws only sometimes: MBs of data, 200 levels."""
    tree: Node = {
        "big": RegularFile(pseudo_random_bytes(1, (5 << 20) + 3), executable=True),
        "deep": deep_chain(200),
        "\u00e9t\u00e9 \u2603 \U0001f600": RegularFile(b"utf-8 name"),
        "empty-dir": {},
    }
    build_tree(tree, tmp_path / "src")
    theirs = nix.dump(tmp_path / "src")
    assert nar_of(tmp_path / "src") == theirs
    restore_nar(iter([theirs[i : i + 65536] for i in range(0, len(theirs), 65536)]), tmp_path / "r")
    assert nix.dump(tmp_path / "r") == theirs


# --- Guix's writer, through the Guile oracle ---


def oracle_nar(oracle: Path, path: Path) -> bytes:
    result = subprocess.run(
        [str(oracle), "nar", str(path)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.mark.parametrize(
    "tree",
    [
        TREE_VECTOR,
        {
            "a": {"b": {"c": RegularFile(b"deep\n", executable=True)}, "empty": {}},
            "Z-upper-first": Link("/gnu/store/xxx-dangling"),
            "\u00e9t\u00e9": RegularFile(pseudo_random_bytes(2, 100_003)),
            "zz": RegularFile(b"1234567"),
        },
        RegularFile(b"root is a file\n", executable=True),
    ],
    ids=["tree-vector", "mixed", "file-root"],
)
def test_our_nar_matches_the_guile_oracle(oracle: Path, tree: Node, tmp_path: Path) -> None:
    build_tree(tree, tmp_path / "src")
    assert nar_of(tmp_path / "src") == oracle_nar(oracle, tmp_path / "src")
