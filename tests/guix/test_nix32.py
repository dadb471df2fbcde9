"""nix-base32 against Guix's own examples and as a bijection."""

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.errors import Nix32Error
from p2pcache.guix import nix32


def test_alphabet_is_nix_alphabet(vectors_dir):
    vectors = json.loads((vectors_dir / "nar-vectors.json").read_text())
    assert vectors["nix_base32_alphabet"] == nix32.ALPHABET
    assert not set("eout") & set(nix32.ALPHABET)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (bytes([0]), "00"),
        (bytes([0xFF]), "7z"),
        (bytes.fromhex("0102030405"), "0l2060h1"),
        (
            hashlib.sha256(b"").digest(),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
    ],
)
def test_encode_matches_guix_examples(data, expected):
    assert nix32.encode(data) == expected
    assert nix32.decode(expected) == data


def test_vector_nar_hashes_encode_their_hex(vectors_dir):
    vectors = json.loads((vectors_dir / "nar-vectors.json").read_text())
    for nar in vectors["nars"].values():
        assert "sha256:" + nix32.encode(bytes.fromhex(nar["nar_sha256_hex"])) == nar["nar_hash"]


def test_lengths():
    assert nix32.encoded_length(20) == 32
    assert nix32.encoded_length(32) == 52
    assert nix32.decoded_length(32) == 20
    assert nix32.decoded_length(52) == 32


@given(st.binary(max_size=80))
def test_round_trip(data):
    text = nix32.encode(data)
    assert len(text) == nix32.encoded_length(len(data))
    assert nix32.is_nix32(text)
    assert nix32.decode(text) == data


@pytest.mark.parametrize("bad", ["0e", "ou", "7Z", "0-", "0\u00e9", "t0"])
def test_decode_rejects_characters_outside_alphabet(bad):
    with pytest.raises(Nix32Error, match="alphabet"):
        nix32.decode(bad)


def test_decode_rejects_impossible_length():
    # 3 characters cannot be the encoding of any whole number of bytes (2 -> 1 byte, 4 -> 2).
    with pytest.raises(Nix32Error, match="length"):
        nix32.decode("000")


def test_decode_rejects_bits_beyond_the_last_byte():
    # "zz" would be 10 bits set; one byte holds only 8.
    with pytest.raises(Nix32Error, match="bits"):
        nix32.decode("zz")
