"""RFC 6962 hashing: the iterative root equals the RFC's recursive definition and known roots."""

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from p2pcache.trust.merkle_hash import (
    EMPTY_ROOT,
    largest_power_of_two_below,
    leaf_hash,
    merkle_root,
    node_hash,
)

# The reference leaves of RFC 6962's test data (used by certificate-transparency and
# transparency-dev/merkle), with the roots of their prefixes.
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def recursive_mth(leaves):
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + recursive_mth(leaves[:k]) + recursive_mth(leaves[k:])).digest()


def test_known_roots():
    for n in range(1, len(LEAVES) + 1):
        assert merkle_root(LEAVES[:n]).hex() == ROOTS[n - 1]


def test_empty_tree():
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_leaf_and_node_are_domain_separated():
    assert leaf_hash(b"ab") != hashlib.sha256(b"ab").digest()
    assert node_hash(b"a", b"b") != leaf_hash(b"ab")


def test_split_point():
    assert [largest_power_of_two_below(n) for n in range(2, 10)] == [1, 2, 2, 4, 4, 4, 4, 8]


@given(st.lists(st.binary(max_size=8), max_size=70))
def test_iterative_root_equals_recursive_definition(leaves):
    assert merkle_root(leaves) == recursive_mth(leaves)
