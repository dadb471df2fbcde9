"""ECDSA over the Ed25519 curve, exactly as libgcrypt computes it for Guix keys (spec §3.5).

Guix signs narinfos with libgcrypt's ECDSA on the twisted Edwards curve Ed25519, not with
EdDSA (spec §3.1), following `cipher/ecc-ecdsa.c` and `cipher/dsa-common.c`:

* e = int_be(SHA-256 digest) >> 3 (the 256-bit hash truncated to the 253 bits of n);
* r = x(k·G) mod n, with x the affine Edwards x coordinate in [0, p);
* s = k⁻¹ (e + r·d) mod n, with the secret d (2^254 <= d < 2^255 for libgcrypt's keys, so
  d > n) reduced only inside the arithmetic;
* k from RFC 6979 with HMAC-SHA256, with libgcrypt's choices: int2octets(d) is d itself as 32
  big-endian bytes, not reduced mod n; bits2octets(h) = (h >> 3) - n if that is >= n; and a
  candidate k is int_be(T) >> 3. Only these make signatures byte-identical to libgcrypt's.

Side channels: everything that touches d or k runs in libsodium's constant-time code through
PyNaCl (`crypto_scalarmult_ed25519_base_noclamp`, `crypto_core_ed25519_scalar_*`), on 32-byte
little-endian scalars. Python integers only ever hold public values: the digest, r, s, and
coordinates of points whose x is published as r.

Speed (2026-11-25, 2-core build VM, Python 3.11, PyNaCl 1.6.2): a Python `pow` with a 252-bit
exponent costs ~130 µs, as much as the rest of a signature. So no square root is taken on the
hot paths: signing recovers x(R) from the y coordinates of R and R + G (one libsodium
addition and one extended-Euclid inverse, ~35 µs).

Verification is what a node does for every narinfo a peer relays, so it has a compiled path
(`_edwards25519.c`, 2026-11-26): a table of multiples of each key, made once (1.6 ms) and
kept for the last few keys, turns u1·G + u2·Q into 128 table additions, ~15 µs, and
`verify` takes ~53 µs (17 µs of it Python's inverse of s mod n). Without the extension (no
C compiler at install) it goes through libsodium: ~150 µs, of which ~105 µs is its
variable-base multiplication, which validates Q on every call; the result's x is then found
among the at most eight candidates r + j·n by the curve equation. Both paths accept exactly
the same signatures, which the tests check.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from types import ModuleType

from nacl import bindings as sodium
from nacl.exceptions import RuntimeError as SodiumRuntimeError

from p2pcache.errors import SignatureError

_compiled: ModuleType | None
try:
    from p2pcache.guix import _edwards25519 as _compiled
except ImportError:  # built without a C compiler: the libsodium path below
    _compiled = None

P = 2**255 - 19
"""The field prime."""
N = 2**252 + 27742317777372353535851937790883648493
"""The order n of the base point G (a 253-bit prime)."""
CURVE_D = (-121665 * pow(121666, -1, P)) % P
"""The curve constant d of -x² + y² = 1 + d·x²·y²."""
SQRT_M1 = pow(2, (P - 1) // 4, P)
G_X = 15112221349535400772501151409588531511454012693041857206046113283949847762202
G_Y = 4 * pow(5, -1, P) % P
G_ENCODING = G_Y.to_bytes(32, "little")  # x(G) is even, so the sign bit is 0

QBITS = 253  # bits of n; digests are truncated to this many bits
SCALAR_BYTES = 32
_IDENTITY = (1).to_bytes(32, "little")
_ZERO = bytes(32)


def _le(value: int) -> bytes:
    return value.to_bytes(SCALAR_BYTES, "little")


def _reduce(little_endian: bytes) -> bytes:
    """value mod n, constant time (libsodium reduces 64-byte inputs)."""
    return sodium.crypto_core_ed25519_scalar_reduce(little_endian.ljust(64, b"\0"))


def hash_to_int(digest: bytes) -> int:
    """e: the digest as a big-endian integer, truncated to the 253 bits of n.

    libgcrypt's `_gcry_dsa_normalize_hash` shifts right by (8·len − 253) when the digest is
    longer than n; it does not reduce mod n here.
    """
    value = int.from_bytes(digest, "big")
    excess = 8 * len(digest) - QBITS
    return value >> excess if excess > 0 else value


def _secret_scalar(d: bytes) -> bytes:
    """d mod n as a little-endian scalar; `d` is the big-endian secret (at most 32 bytes)."""
    if len(d) > SCALAR_BYTES:
        raise SignatureError("an Ed25519 secret scalar is at most 32 bytes")
    reduced = _reduce(d[::-1])
    if hmac.compare_digest(reduced, _ZERO):
        raise SignatureError("the secret key is a multiple of the group order and unusable")
    return reduced


def rfc6979_nonce(d: bytes, digest: bytes) -> bytes:
    """The deterministic nonce k (32 bytes, big-endian) libgcrypt derives for (d, digest).

    RFC 6979 §3.2 with HMAC-SHA256 as `_gcry_dsa_gen_rfc6979_k` runs it: x = d as 32
    big-endian bytes (not reduced), h1 = bits2octets(digest), and a candidate k = T >> 3
    accepted when 0 < k < n. `digest` must be a SHA-256 digest, as libgcrypt requires the
    hash length to match the algorithm named in the data.
    """
    if len(digest) != 32:
        raise SignatureError("RFC 6979 nonces are derived from a 32-byte SHA-256 digest")
    if len(d) > SCALAR_BYTES:
        raise SignatureError("an Ed25519 secret scalar is at most 32 bytes")
    x = d.rjust(SCALAR_BYTES, b"\0")
    z = hash_to_int(digest)
    if z >= N:
        z -= N
    h1 = z.to_bytes(SCALAR_BYTES, "big")

    def mac(key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, hashlib.sha256).digest()

    v = b"\x01" * 32
    k = b"\x00" * 32
    k = mac(k, v + b"\x00" + x + h1)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + x + h1)
    v = mac(k, v)
    while True:
        v = mac(k, v)  # T = V: one HMAC block already holds qlen = 253 bits
        candidate = _shift_right_3(v)
        little = candidate[::-1]
        below_n = hmac.compare_digest(_reduce(little), little)
        if below_n and not hmac.compare_digest(little, _ZERO):
            return candidate
        k = mac(k, v + b"\x00")
        v = mac(k, v)


def _shift_right_3(big_endian: bytes) -> bytes:
    """bits2int for tlen = 256, qlen = 253, bytewise so the secret never becomes an int."""
    out = bytearray(len(big_endian))
    carry = 0
    for i, byte in enumerate(big_endian):
        out[i] = (byte >> 3) | carry
        carry = (byte & 7) << 5
    return bytes(out)


def public_point(d: bytes) -> bytes:
    """Q = d·G as the 32-byte Ed25519 point encoding Guix stores as `q` (spec §3.2)."""
    return sodium.crypto_scalarmult_ed25519_base_noclamp(_secret_scalar(d))


def sign(digest: bytes, d: bytes) -> tuple[int, int]:
    """(r, s), libgcrypt's ECDSA signature of `digest` with the big-endian secret `d`."""
    d_scalar = _secret_scalar(d)
    k_scalar = rfc6979_nonce(d, digest)[::-1]
    point = sodium.crypto_scalarmult_ed25519_base_noclamp(k_scalar)
    r = _affine_x_fast(point) % N
    if r == 0:  # probability ~2^-252; libgcrypt would pick another k
        raise SignatureError("signature nonce gave r = 0; this cannot happen in practice")
    e = _reduce(_le(hash_to_int(digest)))
    total = sodium.crypto_core_ed25519_scalar_add(
        e, sodium.crypto_core_ed25519_scalar_mul(_le(r), d_scalar)
    )
    s_scalar = sodium.crypto_core_ed25519_scalar_mul(
        sodium.crypto_core_ed25519_scalar_invert(k_scalar), total
    )
    s = int.from_bytes(s_scalar, "little")
    if s == 0:
        raise SignatureError("signature gave s = 0; this cannot happen in practice")
    return r, s


def verify(digest: bytes, r: int, s: int, q: bytes) -> bool:
    """Whether (r, s) is libgcrypt-valid for `digest` under the public point `q`.

    As `_gcry_ecc_ecdsa_verify`: 0 < r < n and 0 < s < n, X = (e·s⁻¹)·G + (r·s⁻¹)·Q, X not
    the identity, x(X) mod n = r. Q must be a canonical encoding of a point of the prime-order
    subgroup (libsodium's checks); libgcrypt only asks for a point on the curve, so keys with
    a small-order component, which `d·G` never has, are refused here.
    """
    if not (0 < r < N and 0 < s < N) or len(q) != 32:
        return False
    w = pow(s, -1, N)
    u1 = hash_to_int(digest) * w % N
    u2 = r * w % N
    if _compiled is not None:
        q_table = _point_table(q)
        if q_table is None:
            return False
        # x(identity) = 0 never equals r > 0, so the identity needs no test of its own.
        x = _compiled.combine_x(_le(u1), _point_table(G_ENCODING), _le(u2), q_table)
        return int.from_bytes(x, "little") % N == r
    return _verify_with_libsodium(u1, u2, r, q)


def has_compiled_verify() -> bool:
    """Whether verification runs through the C extension (the node warns at start if not)."""
    return _compiled is not None


@functools.lru_cache(maxsize=16)
def _point_table(q: bytes) -> bytes | None:
    """The extension's table of multiples of the point `q`, or None when `q` is not a
    canonical encoding of a point of the prime-order subgroup (the checks libsodium's
    multiplication makes). Kept for 16 keys: 30 KiB each, and only authorized keys reach
    verification, so the cache is not an attacker's to churn."""
    assert _compiled is not None
    if not sodium.crypto_core_ed25519_is_valid_point(q):
        return None
    x, y = decode_point(q)
    return _compiled.point_table(_le(x), _le(y))


def _verify_with_libsodium(u1: int, u2: int, r: int, q: bytes) -> bool:
    """The check of `verify` without the extension: libsodium's multiplications."""
    try:
        point = sodium.crypto_scalarmult_ed25519_noclamp(_le(u2), q)
        if u1:
            point = sodium.crypto_core_ed25519_add(
                sodium.crypto_scalarmult_ed25519_base_noclamp(_le(u1)), point
            )
    except SodiumRuntimeError:  # q is not a valid point of the prime-order subgroup
        return False
    if point == _IDENTITY:
        return False
    return _has_x_congruent_to(point, r)


def _has_x_congruent_to(encoding: bytes, r: int) -> bool:
    """Whether the point's affine x is ≡ r (mod n), with no square root.

    x(X) < p < 8n, so it is one of r + j·n (j < 8) below p. A candidate is x(X) exactly when
    its parity is the encoded sign of x and it satisfies y²·(1 − d·x²) = 1 + x² for X's y
    (the other root, p − x, has the other parity).
    """
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    sign = encoding[31] >> 7
    y2 = y * y % P
    x = r
    while x < P:
        if x & 1 == sign and (y2 * (1 - CURVE_D * x * x) - 1 - x * x) % P == 0:
            return True
        x += N
    return False


def decode_point(encoding: bytes) -> tuple[int, int]:
    """The affine (x, y) of a 32-byte Ed25519 point encoding (RFC 8032 §5.1.3).

    Refuses non-canonical y (>= p), y values with no x on the curve, and a "negative zero" x.
    Uses one modular exponentiation; only for public points.
    """
    if len(encoding) != 32:
        raise ValueError("an Ed25519 point encoding is 32 bytes")
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    sign = encoding[31] >> 7
    if y >= P:
        raise ValueError("point encoding is not canonical (y >= p)")
    u = (y * y - 1) % P
    v = (CURVE_D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P:
            raise ValueError("no point on the curve has this y")
    if x == 0 and sign:
        raise ValueError("point encoding has a negative zero x")
    if x & 1 != sign:
        x = P - x
    return x, y


def _affine_x_fast(encoding: bytes) -> int:
    """x of a point of the prime-order subgroup from its y and the y of (point + G).

    Edwards addition gives y(R+G) = (y·y_G + x·x_G) / (1 − d·x·x_G·y·y_G), hence
    x = (y(R+G) − y·y_G) / (x_G·(1 + d·y·y_G·y(R+G))): one libsodium addition and one
    extended-Euclid inverse instead of a 252-bit exponentiation. The denominator vanishes only
    for a handful of points; then take the square root.
    """
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    summed = sodium.crypto_core_ed25519_add(encoding, G_ENCODING)
    y3 = int.from_bytes(summed, "little") & ((1 << 255) - 1)
    denominator = G_X * (1 + CURVE_D * y * G_Y % P * y3) % P
    if denominator == 0:
        return decode_point(encoding)[0]
    return (y3 - y * G_Y) * pow(denominator, -1, P) % P
