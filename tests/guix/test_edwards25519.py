"""The compiled a·P + b·Q (p2pcache/guix/_edwards25519.c), against libsodium's arithmetic."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium

from p2pcache.guix import ed25519_ecdsa as ecdsa
from p2pcache.guix.ed25519_ecdsa import G_ENCODING, G_X, G_Y, N, P

edwards = pytest.importorskip(
    "p2pcache.guix._edwards25519",
    reason="the C extension was not built (pip install -e . with a C compiler)",
)


def le(value: int) -> bytes:
    return value.to_bytes(32, "little")


def table_of(encoding: bytes) -> bytes:
    x, y = ecdsa.decode_point(encoding)
    return edwards.point_table(le(x), le(y))


def reference_x(a: int, p: bytes, b: int, q: bytes) -> int:
    """x(a·P + b·Q) through libsodium, which refuses to return the identity."""
    terms = [
        sodium.crypto_scalarmult_ed25519_noclamp(le(k % N), point)
        for k, point in ((a, p), (b, q))
        if k % N
    ]
    if not terms:
        return 0
    total = terms[0] if len(terms) == 1 else sodium.crypto_core_ed25519_add(*terms)
    return 0 if total == le(1) else ecdsa.decode_point(total)[0]


@pytest.fixture(scope="module")
def g_table() -> bytes:
    return edwards.point_table(le(G_X), le(G_Y))


def point_of(k: int) -> bytes:
    return sodium.crypto_scalarmult_ed25519_base_noclamp(le(k))


below_2_253 = st.integers(min_value=0, max_value=2**253 - 1)


@settings(max_examples=300, deadline=None)
@given(below_2_253, st.integers(min_value=1, max_value=N - 1), below_2_253)
def test_combine_x_agrees_with_libsodium(a, k, b):
    g_table = edwards.point_table(le(G_X), le(G_Y))
    q = point_of(k)
    x = int.from_bytes(edwards.combine_x(le(a), g_table, le(b), table_of(q)), "little")
    assert x == reference_x(a, G_ENCODING, b, q)


@pytest.mark.parametrize(
    "a", [0, 1, 2, 7, 8, 9, 15, 16, 17, N - 1, N, N + 1, 2**252, 2**253 - 1, (2**253 - 1) // 3]
)
@pytest.mark.parametrize("b", [0, 1, 8, N - 1, 2**253 - 1])
def test_combine_x_at_the_edges_of_the_digit_recoding(g_table, a, b):
    q = point_of(123456789)
    x = int.from_bytes(edwards.combine_x(le(a), g_table, le(b), table_of(q)), "little")
    assert x == reference_x(a, G_ENCODING, b, q)
    assert x < P


def test_the_identity_has_x_zero(g_table):
    assert edwards.combine_x(le(0), g_table, le(N), g_table) == bytes(32)
    # a·G + (n - a)·G
    assert edwards.combine_x(le(5), g_table, le(N - 5), g_table) == bytes(32)


def test_the_table_of_g_gives_the_base_point(g_table):
    assert int.from_bytes(edwards.combine_x(le(1), g_table, le(0), g_table), "little") == G_X


def test_bad_arguments_are_refused_not_read(g_table):
    with pytest.raises(ValueError, match="32 bytes"):
        edwards.combine_x(bytes(31), g_table, le(1), g_table)
    with pytest.raises(ValueError, match="below 2\\^253"):
        edwards.combine_x(le(2**253), g_table, le(1), g_table)
    with pytest.raises(ValueError, match="below 2\\^253"):
        edwards.combine_x(le(1), g_table, b"\xff" * 32, g_table)
    with pytest.raises(ValueError, match="not a table"):
        edwards.combine_x(le(1), g_table[:-1], le(1), g_table)
    with pytest.raises(ValueError, match="not a table"):
        edwards.combine_x(le(1), g_table, le(1), b"")
    with pytest.raises(ValueError, match="32 bytes"):
        edwards.point_table(le(G_X), bytes(33))
    with pytest.raises(ValueError, match="below 2\\^255"):
        edwards.point_table(le(G_X), b"\xff" * 32)
    with pytest.raises(TypeError):
        edwards.point_table(G_X, G_Y)


def test_verify_takes_the_compiled_path():
    """The build must have made the extension: without it every check costs ~3x more."""
    assert ecdsa.has_compiled_verify()
