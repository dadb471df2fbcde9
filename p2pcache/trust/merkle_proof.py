"""Merkle inclusion and consistency proofs: verification (RFC 9162 §2.1.3.2 and §2.1.4.2).

The semantics are those of transparency-dev/merkle's `proof` package, whose test vectors
(tests/vectors/merkle) this module passes exactly, including the adversarial ones. Each check
comes in two halves: `root_from_*` computes the root a proof implies (or says why the proof
cannot be one), and `verify_*` compares that root with the one a signed checkpoint states.
Failures are exceptions of a specific type, never a bare boolean, so a caller cannot forget to
look and the log says what went wrong.

The proof geometry: an inclusion proof for leaf `index` in a tree of `size` leaves has an
*inner* part, the siblings below the level where the paths to `index` and to `size - 1`
diverge (ordered bottom-up, on either side), and a *border* part, the left siblings along the
tree's right border above that level. A consistency proof from `size1` to `size2` is a suffix of
the inclusion proof for leaf `size1 - 1` in the tree of `size2`, preceded by the root of the
biggest complete subtree ending at `size1` unless that subtree is the whole old tree.

Hash lengths: a leaf hash and every proof element must be exactly HASH_SIZE bytes (they are
hashed). Roots are only compared, so a root of another length never matches; when
`size1 == size2` the consistency check is the comparison of the two given roots (a proof must
then be empty), which is why it accepts equal roots of any length, as the reference does.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pcache.errors import P2PCacheError
from p2pcache.trust.merkle_hash import node_hash

HASH_SIZE = 32
"""SHA-256 output size: the length of every leaf hash, node hash and root."""

MAX_PROOF_LENGTH = 64
"""A proof in a tree of fewer than 2**64 leaves has at most 64 hashes (RFC 9162 §2.1.3)."""


class ProofError(P2PCacheError):
    """A Merkle proof does not prove what it was offered for.

    `reason` is a short stable code (for metrics labels and the protocol's test vectors).
    """

    reason = "proof"


class ProofParameterError(ProofError):
    """The index or sizes cannot describe a proof (index beyond the tree, time travel, ...)."""

    reason = "proof-parameters"


class ProofLengthError(ProofError):
    """The proof has the wrong number of hashes for the index and sizes it claims."""

    reason = "proof-length"


class HashLengthError(ProofError):
    """A leaf hash, proof element or root that must be hashed is not HASH_SIZE bytes."""

    reason = "hash-length"


class RootMismatchError(ProofError):
    """The proof is well formed but implies another root than the one it was checked against."""

    reason = "root-mismatch"

    def __init__(self, message: str, *, expected: bytes, calculated: bytes) -> None:
        super().__init__(message)
        self.expected = expected
        self.calculated = calculated


def inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of leaf `index` in a tree of `size` leaves.

    Requires 0 <= index < size.
    """
    _check_inclusion_parameters(index, size)
    inner, border = _decompose_inclusion_proof(index, size)
    return inner + border


def consistency_proof_length(size1: int, size2: int) -> int:
    """Number of hashes in the consistency proof from `size1` to `size2` leaves.

    Requires 0 < size1 <= size2.
    """
    _check_consistency_parameters(size1, size2)
    if size1 == size2:
        return 0
    inner, border = _decompose_inclusion_proof(size1 - 1, size2)
    shift = _trailing_zeros(size1)
    seed_in_proof = 0 if size1 == 1 << shift else 1
    return seed_in_proof + inner - shift + border


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root of the tree of `size` leaves in which leaf `index` has `leaf_hash` and `proof`.

    Requires 0 <= index < size, len(leaf_hash) == HASH_SIZE, and exactly
    `inclusion_proof_length(index, size)` proof hashes of HASH_SIZE bytes each, ordered from the
    leaf's sibling upwards (RFC 9162 §2.1.3.1). Raises ProofParameterError, HashLengthError or
    ProofLengthError otherwise.
    """
    _check_inclusion_parameters(index, size)
    _check_hash_length(leaf_hash, "the leaf hash")
    inner, border = _decompose_inclusion_proof(index, size)
    _check_proof(proof, inner + border, f"leaf {index} in a tree of {size}")
    seed = _chain_inner(leaf_hash, proof[:inner], index)
    return _chain_border_right(seed, proof[inner:])


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf `index` with `leaf_hash` is in the tree of `size` leaves with `root`.

    Same preconditions as `root_from_inclusion_proof`; raises RootMismatchError when the proof
    leads to another root. Returns nothing: success is the absence of an exception.
    """
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    _check_match(calculated, root, f"inclusion proof for leaf {index} in a tree of {size}")


def root_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """The root of the tree of `size2` leaves that `proof` shows to extend the tree (size1, root1).

    Requires 0 < size1 <= size2 (a consistency proof from the empty tree proves nothing, and
    the reference vectors count it as an error). When size1 == size2 the proof must be empty
    and root1 is returned as it is. Otherwise the proof must have exactly
    `consistency_proof_length(size1, size2)` hashes of HASH_SIZE bytes (RFC 9162 §2.1.4.1) and
    must lead back to root1, or RootMismatchError is raised: that is a proof that the old tree
    is not a prefix of any tree this proof describes.
    """
    _check_consistency_parameters(size1, size2)
    if size1 == size2:
        if proof:
            raise ProofLengthError(
                f"a consistency proof between two trees of {size1} leaves must be empty, "
                f"this one has {len(proof)} hashes"
            )
        return root1
    _check_hash_length(root1, "the old root")
    inner, border = _decompose_inclusion_proof(size1 - 1, size2)
    shift = _trailing_zeros(size1)
    inner -= shift  # below level `shift`, the old tree's last complete subtree is one node
    if size1 == 1 << shift:
        # The old tree is itself a complete subtree: its root is the seed, not sent.
        seed, start = root1, 0
    else:
        if not proof:
            raise ProofLengthError(f"the consistency proof from {size1} to {size2} leaves is empty")
        seed, start = proof[0], 1
    _check_proof(proof, start + inner + border, f"consistency from {size1} to {size2} leaves")
    path = proof[start:]
    mask = (size1 - 1) >> shift
    old_root = _chain_inner_right(seed, path[:inner], mask)
    old_root = _chain_border_right(old_root, path[inner:])
    _check_match(old_root, root1, f"consistency proof from {size1} to {size2} leaves (old root)")
    new_root = _chain_inner(seed, path[:inner], mask)
    return _chain_border_right(new_root, path[inner:])


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size2, root2) is an append-only extension of the tree (size1, root1).

    Same preconditions as `root_from_consistency_proof`; raises RootMismatchError when the proof
    does not lead to root2 (or back to root1).
    """
    calculated = root_from_consistency_proof(size1, size2, proof, root1)
    _check_match(calculated, root2, f"consistency proof from {size1} to {size2} leaves")


def _check_inclusion_parameters(index: int, size: int) -> None:
    if index < 0 or size < 0:
        raise ProofParameterError(f"leaf index {index} and tree size {size} must not be negative")
    if index >= size:
        raise ProofParameterError(f"leaf index {index} is beyond a tree of {size} leaves")


def _check_consistency_parameters(size1: int, size2: int) -> None:
    if size1 < 0 or size2 < 0:
        raise ProofParameterError(f"tree sizes {size1} and {size2} must not be negative")
    if size2 < size1:
        raise ProofParameterError(
            f"a tree of {size2} leaves cannot extend an older tree of {size1} leaves"
        )
    if size1 == 0:
        raise ProofParameterError("a consistency proof from the empty tree proves nothing")


def _check_hash_length(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise HashLengthError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof(proof: Sequence[bytes], expected: int, what: str) -> None:
    if len(proof) != expected:
        raise ProofLengthError(f"the proof of {what} has {len(proof)} hashes, not {expected}")
    for i, h in enumerate(proof):
        _check_hash_length(h, f"proof hash {i}")


def _check_match(calculated: bytes, expected: bytes, what: str) -> None:
    if calculated != expected:
        raise RootMismatchError(
            f"the {what} leads to root {calculated.hex()[:16]}…, "
            f"not the expected {expected.hex()[:16]}…",
            expected=expected,
            calculated=calculated,
        )


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def _decompose_inclusion_proof(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below and above where the paths to index and size-1 part."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Hash up from `seed` at `index` of its level, the sibling side given by each index bit."""
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Like _chain_inner but only through left siblings: the same subtree at its older size."""
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    """Hash up the right border, where every proof hash is a left sibling."""
    for h in proof:
        seed = node_hash(h, seed)
    return seed
