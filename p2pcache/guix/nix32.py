"""nix-base32, the encoding of store path hashes and NarHash values.

Not RFC 4648: the alphabet omits e, o, u and t, and the byte string is read as a little-endian
integer written most significant digit first (guix/base32.scm). Getting the bit order wrong
still round-trips, so the tests pin it against Guix's own examples.
"""

from __future__ import annotations

from p2pcache.errors import Nix32Error

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}


def encoded_length(byte_length: int) -> int:
    """Number of nix32 characters for `byte_length` bytes: ceil(8 * n / 5)."""
    return (byte_length * 8 + 4) // 5


def decoded_length(text_length: int) -> int:
    """Number of bytes that `text_length` characters encode (inverse of `encoded_length`)."""
    return text_length * 5 // 8


def encode(data: bytes) -> str:
    """Encode bytes as nix-base32."""
    value = int.from_bytes(data, "little")
    length = encoded_length(len(data))
    out = []
    for _ in range(length):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def is_nix32(text: str) -> bool:
    """True when every character of `text` is in the nix-base32 alphabet."""
    return all(c in _DIGIT for c in text)


def decode(text: str) -> bytes:
    """Decode nix-base32; raises Nix32Error on a bad character or impossible length."""
    n_bytes = decoded_length(len(text))
    if encoded_length(n_bytes) != len(text):
        raise Nix32Error(f"{len(text)} characters is not a valid nix-base32 length")
    value = 0
    for c in text:
        digit = _DIGIT.get(c)
        if digit is None:
            raise Nix32Error(f"character {c!r} is not in the nix-base32 alphabet")
        value = (value << 5) | digit
    if value >> (8 * n_bytes):
        raise Nix32Error(f"nix-base32 string {text[:60]!r} has bits beyond its {n_bytes} bytes")
    return value.to_bytes(n_bytes, "little")
