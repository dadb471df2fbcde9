"""Merkle proof verification: every transparency-dev/merkle vector, and properties against the RFC.

The vectors (tests/vectors/merkle, copied with their adversarial cases) must get exactly their
verdict: success when wantErr is false, a ProofError when it is true. The properties check the
verifier against proofs built by a naive tree written from RFC 9162's recursive definitions.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_proof import (
    HashLengthError,
    ProofError,
    ProofLengthError,
    ProofParameterError,
    RootMismatchError,
    consistency_proof_length,
    inclusion_proof_length,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from tests.trust import merkle_reference as ref

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle"
INCLUSION = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "consistency").rglob("*.json"))


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(VECTORS)) for p in paths]


def test_all_vectors_are_found():
    # 98 inclusion and 98 consistency cases in the copied snapshot: none silently skipped.
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98


@pytest.mark.parametrize("path", INCLUSION, ids=ids(INCLUSION))
def test_inclusion_vector_verdict(path: Path):
    v = json.loads(path.read_text())
    proof = [b64(h) for h in v["proof"] or []]
    args = (v["leafIdx"], v["treeSize"], b64(v["leafHash"]), proof)
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args, b64(v["root"]))
    else:
        verify_inclusion(*args, b64(v["root"]))
        assert root_from_inclusion_proof(*args) == b64(v["root"])


@pytest.mark.parametrize("path", CONSISTENCY, ids=ids(CONSISTENCY))
def test_consistency_vector_verdict(path: Path):
    v = json.loads(path.read_text())
    proof = [b64(h) for h in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, b64(v["root1"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args, b64(v["root2"]))
    else:
        verify_consistency(*args, b64(v["root2"]))
        assert root_from_consistency_proof(*args) == b64(v["root2"])


# -- specific error types -------------------------------------------------------------------------

LEAVES = [bytes([i]) * (i + 1) for i in range(8)]


def test_index_beyond_tree_is_a_parameter_error():
    with pytest.raises(ProofParameterError):
        verify_inclusion(8, 8, leaf_hash(LEAVES[0]), [], ref.mth(LEAVES))
    with pytest.raises(ProofParameterError):
        verify_inclusion(-1, 8, leaf_hash(LEAVES[0]), [], ref.mth(LEAVES))


def test_consistency_from_the_empty_tree_is_a_parameter_error():
    with pytest.raises(ProofParameterError):
        verify_consistency(0, 3, [], ref.mth([]), ref.mth(LEAVES[:3]))


def test_time_travel_is_a_parameter_error():
    with pytest.raises(ProofParameterError):
        verify_consistency(4, 3, [], ref.mth(LEAVES[:4]), ref.mth(LEAVES[:3]))


def test_short_proof_is_a_length_error():
    proof = ref.path(2, LEAVES)
    with pytest.raises(ProofLengthError):
        verify_inclusion(2, 8, leaf_hash(LEAVES[2]), proof[:-1], ref.mth(LEAVES))


def test_short_hash_in_proof_is_a_hash_length_error():
    proof = ref.path(2, LEAVES)
    proof[1] = proof[1][:31]
    with pytest.raises(HashLengthError):
        verify_inclusion(2, 8, leaf_hash(LEAVES[2]), proof, ref.mth(LEAVES))


def test_wrong_root_is_a_mismatch_that_names_both_roots():
    proof = ref.path(2, LEAVES)
    wrong = ref.mth(LEAVES[:7])
    with pytest.raises(RootMismatchError) as caught:
        verify_inclusion(2, 8, leaf_hash(LEAVES[2]), proof, wrong)
    assert caught.value.expected == wrong
    assert caught.value.calculated == ref.mth(LEAVES)
    assert caught.value.reason == "root-mismatch"


def test_consistency_proof_that_does_not_lead_back_to_the_old_root_is_a_mismatch():
    proof = ref.proof(3, LEAVES)
    with pytest.raises(RootMismatchError):
        verify_consistency(3, 8, proof, ref.mth(LEAVES[1:4]), ref.mth(LEAVES))


# -- properties against the naive RFC tree --------------------------------------------------------


@st.composite
def tree_and_index(draw):
    size = draw(st.integers(1, 140))
    index = draw(st.integers(0, size - 1))
    return [i.to_bytes(4, "big") for i in range(size)], index


@st.composite
def tree_and_sizes(draw):
    new = draw(st.integers(1, 140))
    old = draw(st.integers(1, new))
    return [i.to_bytes(4, "big") for i in range(new)], old


@settings(max_examples=150, deadline=None)
@given(tree_and_index())
def test_rfc_inclusion_proofs_verify(case):
    leaves, index = case
    proof = ref.path(index, leaves)
    assert inclusion_proof_length(index, len(leaves)) == len(proof)
    root = root_from_inclusion_proof(index, len(leaves), leaf_hash(leaves[index]), proof)
    assert root == ref.mth(leaves)
    verify_inclusion(index, len(leaves), leaf_hash(leaves[index]), proof, ref.mth(leaves))


@settings(max_examples=150, deadline=None)
@given(tree_and_index(), st.data())
def test_inclusion_proof_with_a_flipped_bit_fails(case, data):
    leaves, index = case
    proof = ref.path(index, leaves)
    if not proof:
        return
    i = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    tampered = list(proof)
    tampered[i] = bytes(
        b ^ (1 << (bit % 8)) if n == bit // 8 else b for n, b in enumerate(proof[i])
    )
    with pytest.raises(RootMismatchError):
        verify_inclusion(index, len(leaves), leaf_hash(leaves[index]), tampered, ref.mth(leaves))


@settings(max_examples=150, deadline=None)
@given(tree_and_index(), st.data())
def test_inclusion_proof_for_another_index_fails(case, data):
    leaves, index = case
    if len(leaves) == 1:
        return
    other = data.draw(st.integers(0, len(leaves) - 1).filter(lambda j: j != index))
    proof = ref.path(index, leaves)
    with pytest.raises(ProofError):
        verify_inclusion(other, len(leaves), leaf_hash(leaves[index]), proof, ref.mth(leaves))


@settings(max_examples=150, deadline=None)
@given(tree_and_sizes())
def test_rfc_consistency_proofs_verify(case):
    leaves, old = case
    new = len(leaves)
    proof = ref.proof(old, leaves)
    assert consistency_proof_length(old, new) == len(proof)
    root = root_from_consistency_proof(old, new, proof, ref.mth(leaves[:old]))
    assert root == ref.mth(leaves)
    verify_consistency(old, new, proof, ref.mth(leaves[:old]), ref.mth(leaves))


@settings(max_examples=150, deadline=None)
@given(tree_and_sizes(), st.data())
def test_consistency_proof_with_a_flipped_bit_fails(case, data):
    leaves, old = case
    proof = ref.proof(old, leaves)
    if not proof:
        return
    i = data.draw(st.integers(0, len(proof) - 1))
    tampered = list(proof)
    tampered[i] = bytes([proof[i][0] ^ 0x10]) + proof[i][1:]
    with pytest.raises(RootMismatchError):
        verify_consistency(old, len(leaves), tampered, ref.mth(leaves[:old]), ref.mth(leaves))


@settings(max_examples=100, deadline=None)
@given(tree_and_sizes())
def test_consistency_with_a_rewritten_history_fails(case):
    # The same sizes, but the old tree had other contents: a fork the proof must expose.
    leaves, old = case
    if old == len(leaves):
        return
    forked = [b"forked " + leaf for leaf in leaves[:old]]
    proof = ref.proof(old, leaves)
    with pytest.raises(RootMismatchError):
        verify_consistency(old, len(leaves), proof, ref.mth(forked), ref.mth(leaves))
