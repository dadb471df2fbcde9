"""`p2pcache nar dump|restore`: streams on stdout/stdin, clear errors."""

import hashlib
import json

from tests.cli.run import p2pcache


def test_dump_of_vector_tree_matches(vectors_dir, tmp_path):
    vectors = json.loads((vectors_dir / "nar-vectors.json").read_text())
    tree_nar = (vectors_dir / "tree.nar").read_bytes()
    restored = tmp_path / "tree"
    r = p2pcache("nar", "restore", str(restored), input=tree_nar)
    assert r.returncode == 0, r.stderr
    d = p2pcache("nar", "dump", str(restored))
    assert d.returncode == 0, d.stderr
    assert d.stdout == tree_nar
    digest = hashlib.sha256(d.stdout).hexdigest()
    assert digest == vectors["nars"]["tree"]["nar_sha256_hex"]
    assert vectors["nars"]["tree"]["nar_hash"] in d.stderr.decode()


def test_restore_of_garbage_is_one_line_and_leaves_nothing(tmp_path):
    r = p2pcache("nar", "restore", str(tmp_path / "out"), input=b"not a nar at all")
    assert r.returncode == 1
    assert r.stderr.decode().startswith("p2pcache: ")
    assert r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_dump_of_missing_path(tmp_path):
    r = p2pcache("nar", "dump", str(tmp_path / "missing"))
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert str(tmp_path / "missing") in r.stderr.decode()
