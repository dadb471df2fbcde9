"""Regenerate protocol/vectors/dht-*.json (run from the repository root).

    python protocol/make_dht_vectors.py

Keys are derived from fixed seeds and every timestamp is fixed, and Ed25519 signatures are
deterministic, so the output is the same on every run. Valid records are made with
p2pcache's own code; invalid ones are assembled here byte by byte (with PyNaCl and the
msgpack encoder), since p2pcache refuses to sign them. tests/net/test_provider_record.py
checks the vectors against an independent, from-the-spec reading of protocol/dht.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pcache.net.msgpack_codec import pack
from p2pcache.net.provider_record import (
    MAX_RECORD_SIZE,
    SIGNATURE_DOMAIN,
    OutputsRecord,
    ProviderRecord,
    encode_value,
    node_id_of,
    outputs_key,
    provider_key,
    sign_record,
)

VECTORS = Path(__file__).resolve().parent / "vectors"
NOW = 1_764_000_000  # 2025-11-24T16:00:00Z, the "now" every record vector is judged at
ISSUED = NOW - 600
HASH_A = "0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z"
HASH_B = "1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"
DRV_HASH = "9gq4sfbbfs4zrfqzb4v2dcsnx8z5cy3j"


def seed(name: str) -> bytes:
    return hashlib.sha256(b"p2pcache dht vector key " + name.encode()).digest()


SIGNER = nacl.signing.SigningKey(seed("alice"))
OTHER = nacl.signing.SigningKey(seed("bob"))
PUBLIC = bytes(SIGNER.verify_key)


def raw_record(key: bytes, fields: list, signer: nacl.signing.SigningKey = SIGNER) -> bytes:
    """A record from arbitrary body fields, signed as the spec says (valid or not)."""
    body = pack(fields)
    signature = signer.sign(SIGNATURE_DOMAIN + key + body).signature
    return pack([body, signature])


def provider_fields(endpoint: str, issued: int, expires: int, public: bytes = PUBLIC) -> list:
    return [1, public, issued, expires, endpoint]


def keys_document() -> dict:
    hash_parts = [HASH_A, HASH_B, "00000000000000000000000000000000"]
    publics = [PUBLIC, bytes(OTHER.verify_key)]
    return {
        "comment": "protocol/dht.md v1: DHT keys and node ids",
        "provider_keys": [{"hash_part": h, "key": provider_key(h).hex()} for h in hash_parts],
        "outputs_keys": [
            {"drv_hash_part": h, "key": outputs_key(h).hex()} for h in (DRV_HASH, HASH_A)
        ],
        "node_ids": [{"public_key": p.hex(), "node_id": node_id_of(p).hex()} for p in publics],
    }


def valid_records() -> list[dict]:
    key_a = provider_key(HASH_A)
    out = []

    def add(name: str, key: bytes, record, description: str) -> None:
        signed = sign_record(key, record, SIGNER)
        entry = {
            "name": name,
            "description": description,
            "key": key.hex(),
            "record": signed.encoded.hex(),
            "kind": int(record.kind),
            "public_key": record.public_key.hex(),
            "node_id": node_id_of(record.public_key).hex(),
            "endpoint": record.endpoint,
            "issued": record.issued,
            "expires": record.expires,
            "body": signed.body.hex(),
            "signature": signed.signature.hex(),
        }
        if isinstance(record, OutputsRecord):
            entry["outputs"] = [list(pair) for pair in record.outputs]
        out.append(entry)

    add(
        "provider",
        key_a,
        ProviderRecord(PUBLIC, "http://203.0.113.7:8081", ISSUED, ISSUED + 3600),
        "node serves item HASH_A at its peer endpoint for an hour",
    )
    add(
        "provider-max-ttl-https",
        key_a,
        ProviderRecord(PUBLIC, "https://cache.example.org/p2p", ISSUED, ISSUED + 86400),
        "a lifetime of exactly 24 h is allowed",
    )
    add(
        "provider-issued-within-skew",
        key_a,
        ProviderRecord(PUBLIC, "http://[2001:db8::7]:8081", NOW + 300, NOW + 3900),
        "issued 300 s after now: inside the tolerated clock skew",
    )
    add(
        "outputs",
        outputs_key(DRV_HASH),
        OutputsRecord(
            PUBLIC,
            "http://203.0.113.7:8081",
            ISSUED,
            ISSUED + 7200,
            (
                ("lib", f"{HASH_B}-hello-2.12.1-lib"),
                ("out", f"{HASH_A}-hello-2.12.1"),
            ),
        ),
        "node holds outputs out and lib of the derivation DRV_HASH",
    )
    return out


def invalid_records() -> list[dict]:
    key_a, key_b = provider_key(HASH_A), provider_key(HASH_B)
    endpoint = "http://203.0.113.7:8081"
    good = raw_record(key_a, provider_fields(endpoint, ISSUED, ISSUED + 3600))
    body = pack(provider_fields(endpoint, ISSUED, ISSUED + 3600))
    signature = SIGNER.sign(SIGNATURE_DOMAIN + key_a + body).signature
    tampered_body = pack(provider_fields("http://198.51.100.9:8081", ISSUED, ISSUED + 3600))
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    many_outputs = [[f"output{i:02d}", f"{HASH_B}-{'x' * 50}-output{i:02d}"] for i in range(16)]
    oversize = raw_record(key_a, [2, PUBLIC, ISSUED, ISSUED + 3600, endpoint, many_outputs])
    assert len(oversize) > MAX_RECORD_SIZE
    non_canonical_body = (
        b"\x95\x01\xc4\x20" + PUBLIC + b"\xcf" + ISSUED.to_bytes(8, "big")
        + b"\xce" + (ISSUED + 3600).to_bytes(4, "big") + b"\xb7" + endpoint.encode()
    )  # fmt: skip
    non_canonical = pack(
        [non_canonical_body, SIGNER.sign(SIGNATURE_DOMAIN + key_a + non_canonical_body).signature]
    )
    cases = [
        ("tampered-endpoint", key_a, pack([tampered_body, signature]), "bad_signature",
         "the endpoint was changed after signing"),
        ("flipped-signature", key_a, pack([body, flipped]), "bad_signature",
         "one bit of the signature flipped"),
        ("replayed-under-another-key", key_b, good, "bad_signature",
         "a valid record for HASH_A presented under HASH_B's key"),
        ("signed-by-another-key", key_a,
         raw_record(key_a, provider_fields(endpoint, ISSUED, ISSUED + 3600), OTHER),
         "bad_signature", "the body names alice's public key but bob signed it"),
        ("expired", key_a, raw_record(key_a, provider_fields(endpoint, NOW - 7200, NOW)),
         "expired", "expires exactly now: a record is valid only while now < expires"),
        ("ttl-over-24h", key_a,
         raw_record(key_a, provider_fields(endpoint, ISSUED, ISSUED + 86401)),
         "ttl_too_long", "expires - issued = 86401 s"),
        ("issued-in-the-future", key_a,
         raw_record(key_a, provider_fields(endpoint, NOW + 301, NOW + 3901)),
         "not_yet_valid", "issued 301 s after now"),
        ("oversize", key_a, oversize, "oversize",
         f"an outputs record of {len(oversize)} bytes (limit {MAX_RECORD_SIZE})"),
        ("not-msgpack", key_a, b"\xc1\x00", "malformed", "0xc1 is not a msgpack type"),
        ("not-an-array", key_a, pack({"body": body}), "malformed", "a map, not [body, signature]"),
        ("three-elements", key_a, pack([body, signature, b""]), "malformed",
         "an array of three elements"),
        ("short-signature", key_a, pack([body, signature[:63]]), "malformed",
         "a 63-byte signature"),
        ("trailing-bytes", key_a, good + b"\x00", "malformed",
         "a valid record followed by one more byte"),
        ("non-canonical-body", key_a, non_canonical, "malformed",
         "issued written as uint64 where uint32 suffices (signed correctly)"),
        ("unknown-kind", key_a,
         raw_record(key_a, [3, PUBLIC, ISSUED, ISSUED + 3600, endpoint]), "malformed",
         "record kind 3"),
        ("ftp-endpoint", key_a,
         raw_record(key_a, provider_fields("ftp://203.0.113.7/", ISSUED, ISSUED + 3600)),
         "malformed", "the endpoint is not an http(s) URL"),
        ("short-public-key", key_a,
         raw_record(key_a, provider_fields(endpoint, ISSUED, ISSUED + 3600, PUBLIC[:31])),
         "malformed", "a 31-byte public key"),
        ("expires-before-issued", key_a,
         raw_record(key_a, provider_fields(endpoint, ISSUED, ISSUED - 1)), "malformed",
         "expires before it is issued"),
        ("outputs-unsorted", outputs_key(DRV_HASH),
         raw_record(outputs_key(DRV_HASH), [2, PUBLIC, ISSUED, ISSUED + 3600, endpoint,
                    [["out", f"{HASH_A}-hello"], ["lib", f"{HASH_B}-hello-lib"]]]),
         "malformed", "outputs not sorted by name"),
        ("outputs-bad-path", outputs_key(DRV_HASH),
         raw_record(outputs_key(DRV_HASH), [2, PUBLIC, ISSUED, ISSUED + 3600, endpoint,
                    [["out", "not-a-store-path"]]]),
         "malformed", "an output that is not a store path basename"),
    ]  # fmt: skip
    return [
        {
            "name": name,
            "description": description,
            "key": key.hex(),
            "record": record.hex(),
            "reason": reason,
        }
        for name, key, record, reason, description in cases
    ]


def values_document(valid: list[dict], invalid: list[dict]) -> dict:
    key_a = provider_key(HASH_A)
    by_name = {v["name"]: bytes.fromhex(v["record"]) for v in valid + invalid}

    def value(*names: str) -> str:
        records = [by_name[n] for n in names]
        header = bytes([0x90 | len(records)])
        return (header + b"".join(records)).hex()

    signers = [nacl.signing.SigningKey(seed(f"provider {i}")) for i in range(8)]
    eight = [
        sign_record(
            key_a,
            ProviderRecord(
                bytes(s.verify_key), f"http://198.51.100.{i + 10}:8081", ISSUED, ISSUED + 3600
            ),
            s,
        )
        for i, s in enumerate(signers)
    ]
    return {
        "comment": "protocol/dht.md v1: DHT values (msgpack arrays of records)",
        "now": NOW,
        "cases": [
            {
                "name": "two-valid",
                "key": key_a.hex(),
                "value": value("provider", "provider-max-ttl-https"),
                "accepted": 2,
                "rejected": [],
            },
            {
                "name": "valid-beside-invalid",
                "key": key_a.hex(),
                "value": value("provider", "expired", "tampered-endpoint"),
                "accepted": 1,
                "rejected": ["expired", "bad_signature"],
            },
            {
                "name": "eight-providers-one-reply",
                "key": key_a.hex(),
                "value": encode_value(eight).hex(),
                "accepted": 8,
                "rejected": [],
            },
            {
                "name": "not-an-array",
                "key": key_a.hex(),
                "value": pack(b"i overwrite you").hex(),
                "accepted": 0,
                "rejected": ["malformed"],
            },
            {
                "name": "plain-bytes",
                "key": key_a.hex(),
                "value": b"i overwrite you".hex(),
                "accepted": 0,
                "rejected": ["malformed"],
            },
            {
                "name": "over-8000-bytes",
                "key": key_a.hex(),
                "value": pack([b"\x00" * 8000]).hex(),
                "accepted": 0,
                "rejected": ["oversize"],
            },
            {
                "name": "65-items",
                "key": key_a.hex(),
                "value": (b"\xdc\x00\x41" + b"\xc0" * 65).hex(),
                "accepted": 0,
                "rejected": ["oversize"],
            },
        ],
    }


def write(name: str, document: dict) -> None:
    path = VECTORS / name
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    valid, invalid = valid_records(), invalid_records()
    write("dht-keys.json", keys_document())
    write(
        "dht-records.json",
        {
            "comment": "protocol/dht.md v1: records, judged at `now`",
            "now": NOW,
            "valid": valid,
            "invalid": invalid,
        },
    )
    write("dht-values.json", values_document(valid, invalid))


if __name__ == "__main__":
    main()
