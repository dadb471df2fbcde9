"""ECDSA over Ed25519 as libgcrypt computes it (spec §3.5), checked against libgcrypt's vectors
and against a plain transcription of RFC 6979 and the curve equations."""

import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium

from p2pcache.errors import SignatureError
from p2pcache.guix import ed25519_ecdsa as ecdsa
from p2pcache.guix.ed25519_ecdsa import CURVE_D, G_X, G_Y, N, P
from p2pcache.guix.sexp import find_token, parse_sexp

# An order-8 point (libsodium's small-order blocklist): on the curve, outside the subgroup.
ORDER_8_POINT = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")


@pytest.fixture(params=["compiled", "libsodium"])
def verify_path(request, monkeypatch):
    """Both ways of verifying: the C extension's tables, and libsodium alone (a build without
    a C compiler). They must accept exactly the same signatures."""
    if request.param == "libsodium":
        monkeypatch.setattr(ecdsa, "_compiled", None)
    else:
        assert ecdsa.has_compiled_verify(), "the C extension was not built"
    return request.param


@pytest.fixture(scope="module")
def test_key(vectors_dir):
    secret = parse_sexp((vectors_dir / "test-signing-key.sec").read_bytes())
    return find_token(secret, "d")[1], find_token(secret, "q")[1]


@pytest.fixture(scope="module")
def signed_cases(vectors_dir):
    cases = json.loads((vectors_dir / "narinfo-vectors.json").read_text())["cases"]
    return [case for case in cases if "signed_body" in case]


def digest_of(case):
    return hashlib.sha256(case["signed_body"].encode()).digest()


def test_vectors_e_k_r_s(signed_cases, test_key):
    d, _ = test_key
    assert signed_cases
    for case in signed_cases:
        digest = digest_of(case)
        assert digest.hex() == case["signed_body_sha256_hex"]
        assert ecdsa.hash_to_int(digest) == int(case["e_int_hex"], 16)
        assert int.from_bytes(ecdsa.rfc6979_nonce(d, digest), "big") == int(
            case["rfc6979_k_hex"], 16
        )
        assert ecdsa.sign(digest, d) == (int(case["r_hex"], 16), int(case["s_hex"], 16))


def test_vectors_verify(signed_cases, test_key, verify_path):
    _, q = test_key
    for case in signed_cases:
        r, s = int(case["r_hex"], 16), int(case["s_hex"], 16)
        assert ecdsa.verify(digest_of(case), r, s, q)


def test_public_point_of_the_test_key(test_key):
    d, q = test_key
    assert ecdsa.public_point(d) == q


# --- RFC 6979 against a plain transcription of the RFC ------------------------------------------


def reference_nonce(x: int, digest: bytes) -> int:
    """RFC 6979 §3.2 with HMAC-SHA256, qlen = 253, and int2octets(x) not reduced mod q."""

    def mac(key, data):
        return hmac.new(key, data, hashlib.sha256).digest()

    def bits2int(b):
        return int.from_bytes(b, "big") >> (8 * len(b) - 253)

    h1 = (bits2int(digest) % N).to_bytes(32, "big")
    xo = x.to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    k = mac(k, v + b"\x00" + xo + h1)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + xo + h1)
    v = mac(k, v)
    while True:
        v = mac(k, v)
        candidate = bits2int(v)
        if 0 < candidate < N:
            return candidate
        k = mac(k, v + b"\x00")
        v = mac(k, v)


scalars = st.integers(min_value=1, max_value=2**256 - 1).filter(lambda d: d % N)
digests = st.binary(min_size=32, max_size=32)


@given(scalars, digests)
def test_rfc6979_nonce_matches_the_rfc(d, digest):
    nonce = ecdsa.rfc6979_nonce(d.to_bytes(32, "big"), digest)
    assert int.from_bytes(nonce, "big") == reference_nonce(d, digest)


def test_rfc6979_uses_the_unreduced_secret(test_key):
    # libgcrypt keys have d > n; reducing it first (as plain RFC 6979 would) changes k.
    d, _ = test_key
    digest = hashlib.sha256(b"x").digest()
    value = int.from_bytes(d, "big")
    assert value > N
    nonce = int.from_bytes(ecdsa.rfc6979_nonce(d, digest), "big")
    assert nonce == reference_nonce(value, digest)
    assert nonce != reference_nonce(value % N, digest)


def test_rfc6979_wants_a_sha256_digest():
    with pytest.raises(SignatureError, match="32-byte"):
        ecdsa.rfc6979_nonce(b"\x40" + bytes(31), b"short")


# --- curve arithmetic ----------------------------------------------------------------------------


def on_curve(x, y):
    return (-x * x + y * y - 1 - CURVE_D * x * x * y * y) % P == 0


def test_base_point():
    assert ecdsa.decode_point(ecdsa.G_ENCODING) == (G_X, G_Y)
    assert on_curve(G_X, G_Y)
    assert sodium.crypto_scalarmult_ed25519_base_noclamp((1).to_bytes(32, "little")) == (
        ecdsa.G_ENCODING
    )


@given(st.integers(min_value=1, max_value=N - 1))
def test_fast_x_recovery_agrees_with_the_square_root(k):
    point = sodium.crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(32, "little"))
    x, y = ecdsa.decode_point(point)
    assert on_curve(x, y)
    assert ecdsa._affine_x_fast(point) == x


def test_decode_point_refuses_bad_encodings():
    with pytest.raises(ValueError, match="32 bytes"):
        ecdsa.decode_point(bytes(31))
    with pytest.raises(ValueError, match="not canonical"):
        ecdsa.decode_point((P + 1).to_bytes(32, "little"))
    with pytest.raises(ValueError, match="no point"):
        ecdsa.decode_point((2).to_bytes(32, "little"))  # y = 2 has no x
    with pytest.raises(ValueError, match="negative zero"):
        ecdsa.decode_point(bytes([1] + [0] * 30 + [0x80]))  # y = 1, x = "-0"


def test_hash_to_int_truncates_to_the_bits_of_n():
    digest = bytes(range(32))
    assert ecdsa.hash_to_int(digest) == int.from_bytes(digest, "big") >> 3
    assert ecdsa.hash_to_int(b"\xff" * 20) == int.from_bytes(b"\xff" * 20, "big")  # shorter


# --- signing and verification ------------------------------------------------------------------


@settings(max_examples=200)
@given(scalars, digests)
def test_sign_verify_round_trip(d, digest):
    secret = d.to_bytes(32, "big")
    q = ecdsa.public_point(secret)
    r, s = ecdsa.sign(digest, secret)
    assert 0 < r < N and 0 < s < N
    assert ecdsa.verify(digest, r, s, q)
    assert not ecdsa.verify(bytes(b ^ 1 for b in digest), r, s, q)
    w = pow(s, -1, N)
    u1, u2 = ecdsa.hash_to_int(digest) * w % N, r * w % N
    assert ecdsa._verify_with_libsodium(u1, u2, r, q)  # the path without the extension
    assert not ecdsa._verify_with_libsodium(u1, u2, r + 1, q)


def test_secret_scalars_that_cannot_sign_are_refused():
    with pytest.raises(SignatureError, match="multiple of the group order"):
        ecdsa.public_point(N.to_bytes(32, "big"))
    with pytest.raises(SignatureError, match="at most 32 bytes"):
        ecdsa.sign(bytes(32), b"\x01" * 33)


@pytest.fixture(scope="module")
def signature(test_key):
    d, q = test_key
    digest = hashlib.sha256(b"body").digest()
    r, s = ecdsa.sign(digest, d)
    return digest, r, s, q


@pytest.mark.parametrize(
    ("r_of", "s_of"),
    [
        (lambda r, s: 0, lambda r, s: s),
        (lambda r, s: r, lambda r, s: 0),
        (lambda r, s: N, lambda r, s: s),
        (lambda r, s: r, lambda r, s: N),
        (lambda r, s: r + N, lambda r, s: s),
        (lambda r, s: r, lambda r, s: s + N),
        (lambda r, s: s, lambda r, s: r),
        (lambda r, s: r, lambda r, s: s + 1),
        (lambda r, s: r - 1, lambda r, s: s),
    ],
    ids=["r=0", "s=0", "r=n", "s=n", "r+n", "s+n", "swapped", "s+1", "r-1"],
)
def test_verify_rejects_altered_values(signature, r_of, s_of, verify_path):
    digest, r, s, q = signature
    assert ecdsa.verify(digest, r, s, q)
    assert not ecdsa.verify(digest, r_of(r, s), s_of(r, s), q)


def test_negated_s_is_not_a_second_valid_signature(signature, verify_path):
    # On a Weierstrass curve (r, n - s) also verifies; on Edwards, -X has x = p - x(X), so
    # libgcrypt rejects it (checked with the oracle), and so must we.
    digest, r, s, q = signature
    assert not ecdsa.verify(digest, r, N - s, q)


@pytest.mark.parametrize(
    "bad_q",
    [
        bytes(31),
        bytes(33),
        (P + 1).to_bytes(32, "little"),  # non-canonical y
        (2).to_bytes(32, "little"),  # no such point
        (1).to_bytes(32, "little"),  # the identity
        (P - 1).to_bytes(32, "little"),  # (0, -1), of order 2
        ORDER_8_POINT,
    ],
    ids=["short", "long", "non-canonical", "off-curve", "identity", "order-2", "order-8"],
)
def test_verify_rejects_invalid_public_points(signature, bad_q, verify_path):
    digest, r, s, _ = signature
    assert not ecdsa.verify(digest, r, s, bad_q)


def test_verify_rejects_a_point_with_a_small_order_component(signature, verify_path):
    digest, r, s, q = signature
    mixed = sodium.crypto_core_ed25519_add(q, ORDER_8_POINT)
    assert not sodium.crypto_core_ed25519_is_valid_point(mixed)
    assert not ecdsa.verify(digest, r, s, mixed)


def test_verify_rejects_a_signature_whose_point_is_the_identity(test_key, verify_path):
    # u1·G + u2·Q = (e + r·d)/s · G is the identity when r = -e/d (mod n).
    d, q = test_key
    digest = hashlib.sha256(b"identity").digest()
    e = ecdsa.hash_to_int(digest) % N
    r = -e * pow(int.from_bytes(d, "big"), -1, N) % N
    assert 0 < r < N
    assert not ecdsa.verify(digest, r, 12345, q)


def test_verify_with_a_digest_that_reduces_to_zero(test_key, verify_path):
    # e ≡ 0 (mod n) makes u1 = 0: X = u2·Q alone, no base-point term.
    d, q = test_key
    digest = (N << 3).to_bytes(32, "big")
    assert ecdsa.hash_to_int(digest) == N
    r, s = ecdsa.sign(digest, d)
    assert ecdsa.verify(digest, r, s, q)
