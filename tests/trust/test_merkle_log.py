"""The SQLite Merkle log: its proofs verify, it only grows, and proofs cost O(log n) reads."""

from __future__ import annotations

import hashlib
import math
import sqlite3

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.trust.checkpoint import builder_origin, verify_checkpoint
from p2pcache.trust.merkle_hash import EMPTY_ROOT, leaf_hash
from p2pcache.trust.merkle_log import LogCorruptError, LogError, LogRangeError, MerkleLog
from p2pcache.trust.merkle_proof import verify_consistency, verify_inclusion
from tests.trust import merkle_reference as ref

ORIGIN = "example.org/test-log"
SMALL = 300


def leaf(i: int) -> bytes:
    return b"leaf %d" % i


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    log = MerkleLog(tmp_path_factory.mktemp("log") / "small.sqlite", ORIGIN)
    log.append_many(leaf(i) for i in range(SMALL))
    yield log
    log.close()


@pytest.fixture(scope="module")
def small_roots():
    leaves = [leaf(i) for i in range(SMALL)]
    return [ref.mth(leaves[:n]) for n in range(SMALL + 1)]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_inclusion_proofs_from_the_log_verify(small_log, small_roots, data):
    size = data.draw(st.integers(1, SMALL), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = small_log.inclusion_proof(index, size)
    assert proof == ref.path(index, [leaf(i) for i in range(size)])
    verify_inclusion(index, size, leaf_hash(leaf(index)), proof, small_roots[size])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_consistency_proofs_from_the_log_verify(small_log, small_roots, data):
    new = data.draw(st.integers(1, SMALL), label="new")
    old = data.draw(st.integers(1, new), label="old")
    proof = small_log.consistency_proof(old, new)
    assert proof == ref.proof(old, [leaf(i) for i in range(new)])
    verify_consistency(old, new, proof, small_roots[old], small_roots[new])


def test_root_of_every_size_is_the_rfc_root(small_log, small_roots):
    assert small_log.size == SMALL
    assert [small_log.root(n) for n in range(SMALL + 1)] == small_roots
    assert small_log.root() == small_roots[SMALL]


def test_appending_one_by_one_gives_the_rfc_root_each_time(tmp_path):
    leaves = []
    with MerkleLog(tmp_path / "log.sqlite", ORIGIN) as log:
        assert log.root() == EMPTY_ROOT
        for i in range(70):
            leaves.append(hashlib.sha256(b"%d" % i).digest()[: i % 40])
            assert log.append(leaves[-1]) == i
            assert log.root() == ref.mth(leaves)


def test_appending_never_changes_what_was_there(tmp_path):
    with MerkleLog(tmp_path / "log.sqlite", ORIGIN) as log:
        log.append_many(leaf(i) for i in range(37))
        before = [log.root(n) for n in range(38)]
        proofs = [log.inclusion_proof(i, 37) for i in range(37)]
        log.append_many(leaf(i) for i in range(37, 100))
        assert [log.root(n) for n in range(38)] == before
        assert [log.inclusion_proof(i, 37) for i in range(37)] == proofs
        assert [log.leaf(i) for i in range(37)] == [leaf(i) for i in range(37)]
        for old in range(1, 38):
            verify_consistency(old, 100, log.consistency_proof(old, 100), before[old], log.root())


def test_the_log_survives_reopening(tmp_path):
    path = tmp_path / "log.sqlite"
    with MerkleLog(path, ORIGIN) as log:
        log.append_many(leaf(i) for i in range(11))
    with MerkleLog(path, ORIGIN) as log:
        assert log.size == 11
        assert log.append(leaf(11)) == 11
        assert log.root() == ref.mth([leaf(i) for i in range(12)])


def test_a_log_file_belongs_to_one_origin(tmp_path):
    path = tmp_path / "log.sqlite"
    MerkleLog(path, ORIGIN).close()
    with pytest.raises(LogError, match="belongs to"):
        MerkleLog(path, "example.org/another-log")


def test_a_batch_is_appended_whole_or_not_at_all(tmp_path):
    with MerkleLog(tmp_path / "log.sqlite", ORIGIN, max_leaf_size=100) as log:
        log.append_many(leaf(i) for i in range(5))
        with pytest.raises(LogError, match="at most 100 bytes"):
            log.append_many([leaf(5), b"x" * 101])
        assert log.size == 5
        assert log.append(leaf(5)) == 5
        assert log.root() == ref.mth([leaf(i) for i in range(6)])


def test_a_second_writer_on_the_same_file_is_noticed(tmp_path):
    path = tmp_path / "log.sqlite"
    with MerkleLog(path, ORIGIN) as first, MerkleLog(path, ORIGIN) as second:
        first.append_many(leaf(i) for i in range(3))
        assert second.append(leaf(3)) == 3
        assert first.append(leaf(4)) == 4
        assert first.root() == second.root() == ref.mth([leaf(i) for i in range(5)])


def test_requests_beyond_the_log_are_range_errors(small_log):
    with pytest.raises(LogRangeError):
        small_log.inclusion_proof(SMALL, SMALL)
    with pytest.raises(LogRangeError):
        small_log.inclusion_proof(0, SMALL + 1)
    with pytest.raises(LogRangeError):
        small_log.consistency_proof(0, 5)
    with pytest.raises(LogRangeError):
        small_log.consistency_proof(6, 5)
    with pytest.raises(LogRangeError):
        small_log.root(SMALL + 1)
    with pytest.raises(LogRangeError):
        small_log.leaf(SMALL)


def test_a_file_missing_subtree_hashes_is_refused(tmp_path):
    path = tmp_path / "log.sqlite"
    with MerkleLog(path, ORIGIN) as log:
        log.append_many(leaf(i) for i in range(8))
    db = sqlite3.connect(path)
    db.execute("DELETE FROM nodes WHERE pos = (SELECT max(pos) FROM nodes)")
    db.commit()
    db.close()
    with pytest.raises(LogCorruptError):
        MerkleLog(path, ORIGIN)


def test_checkpoint_signs_the_committed_tree(tmp_path):
    key = nacl.signing.SigningKey(hashlib.sha256(b"log test builder").digest())
    public = bytes(key.verify_key)
    with MerkleLog(tmp_path / "log.sqlite", builder_origin(public)) as log:
        log.append_many(leaf(i) for i in range(13))
        verified = verify_checkpoint(log.checkpoint(key), public)
    assert verified.size == 13
    assert verified.root == ref.mth([leaf(i) for i in range(13)])


# -- logarithmic work -----------------------------------------------------------------------------

BIG = 1 << 20


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    log = MerkleLog(tmp_path_factory.mktemp("log") / "big.sqlite", ORIGIN)
    log.append_many(i.to_bytes(4, "big") for i in range(BIG))
    yield log
    log.close()


def reads(log: MerkleLog, call) -> tuple[int, int]:
    """(subtree hashes read, SQLite VM instructions run) by one call."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    before = log.nodes_read
    log._db.set_progress_handler(count, 1)
    try:
        call()
    finally:
        log._db.set_progress_handler(None, 1)
    return log.nodes_read - before, steps


@pytest.mark.slow
def test_proofs_at_2_20_leaves_read_logarithmically_many_hashes(big_log, small_log):
    log_n = math.log2(BIG)
    worst_reads = worst_steps = 0
    for index in (0, 1, 12345, BIG // 2 - 1, BIG // 2, 999_999, BIG - 1):
        n, steps = reads(big_log, lambda i=index: big_log.inclusion_proof(i, BIG))
        worst_reads, worst_steps = max(worst_reads, n), max(worst_steps, steps)
    for index, size in ((5, 1_000_001), (777_777, 1_000_001), (BIG - 2, BIG - 1)):
        n, steps = reads(big_log, lambda i=index, s=size: big_log.inclusion_proof(i, s))
        worst_reads, worst_steps = max(worst_reads, n), max(worst_steps, steps)
    for old, new in ((1, BIG), (777_777, BIG), (3, 1_000_001), (BIG - 1, BIG)):
        n, steps = reads(big_log, lambda o=old, w=new: big_log.consistency_proof(o, w))
        worst_reads, worst_steps = max(worst_reads, n), max(worst_steps, steps)
    # A proof has at most log2(n) hashes, one of which may be a right-edge node folded from at
    # most log2(n) stored subtrees: fewer than 2*log2(n) + 2 reads, never a rebuild.
    assert worst_reads <= 2 * log_n + 2
    # The same bound seen from SQLite's side (instructions of its virtual machine): within a
    # small factor of a proof in a tree of 300 leaves, where a rebuild would differ by 3,000x.
    _, small_steps = reads(small_log, lambda: small_log.inclusion_proof(137))
    assert worst_steps <= 6 * small_steps
    assert reads(big_log, lambda: big_log.root(1_000_001))[0] == (1_000_001).bit_count()


@pytest.mark.slow
def test_appending_at_2_20_leaves_reads_nothing_and_writes_logarithmically(big_log):
    nodes_before = big_log._db.execute("SELECT count(*) FROM nodes").fetchone()[0]
    n, _ = reads(big_log, lambda: big_log.append(b"one more"))
    assert n == 0
    nodes_after = big_log._db.execute("SELECT count(*) FROM nodes").fetchone()[0]
    # Leaf 2**20 completes no subtree; leaf 2**20 + 1 completes one; in general index i
    # completes as many as it has trailing one bits, at most log2(n).
    assert nodes_after == nodes_before
    big_log.append(b"and one more")
    assert big_log._db.execute("SELECT count(*) FROM nodes").fetchone()[0] == nodes_after + 1
    assert big_log.size == BIG + 2


def test_each_append_writes_one_subtree_per_trailing_one_bit(tmp_path):
    with MerkleLog(tmp_path / "log.sqlite", ORIGIN) as log:
        count = 0
        for index in range(300):
            log.append(leaf(index))
            after = log._db.execute("SELECT count(*) FROM nodes").fetchone()[0]
            trailing_ones = (index ^ (index + 1)).bit_length() - 1
            assert after - count == trailing_ones <= math.log2(index + 1)
            count = after
