"""Provider and outputs records: protocol/dht.md vectors, recomputed from the document's words,
and the format's properties."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from pathlib import Path

import nacl.signing
import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.errors import FormatError
from p2pcache.net.provider_record import (
    MAX_REPLY_RECORDS,
    MAX_TTL,
    REPLY_VALUE_BUDGET,
    OutputsRecord,
    ProviderRecord,
    RecordError,
    RecordMalformedError,
    RecordOversizeError,
    RecordTtlError,
    decode_record,
    decode_value,
    encode_value,
    make_outputs,
    node_id_of,
    outputs_key,
    provider_key,
    select_for_reply,
    sign_record,
)

ROOT = Path(__file__).resolve().parents[2]
KEYS = json.loads((ROOT / "protocol" / "vectors" / "dht-keys.json").read_text())
RECORDS = json.loads((ROOT / "protocol" / "vectors" / "dht-records.json").read_text())
VALUES = json.loads((ROOT / "protocol" / "vectors" / "dht-values.json").read_text())
NOW = RECORDS["now"]
SIGNER = nacl.signing.SigningKey(hashlib.sha256(b"test signer").digest())
PUBLIC = bytes(SIGNER.verify_key)
HASH = "0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z"


# -- vectors, checked from the spec's words (hashlib, PyNaCl, umsgpack; not our code) --------


@pytest.mark.parametrize("case", KEYS["provider_keys"], ids=lambda c: c["hash_part"])
def test_provider_key_vector(case):
    spec = hashlib.sha1(b"p2pcache-provider-v1\x00" + case["hash_part"].encode()).hexdigest()
    assert case["key"] == spec
    assert provider_key(case["hash_part"]).hex() == spec


@pytest.mark.parametrize("case", KEYS["outputs_keys"], ids=lambda c: c["drv_hash_part"])
def test_outputs_key_vector(case):
    spec = hashlib.sha1(b"p2pcache-drv-outputs-v1\x00" + case["drv_hash_part"].encode())
    assert case["key"] == spec.hexdigest()
    assert outputs_key(case["drv_hash_part"]).hex() == spec.hexdigest()


@pytest.mark.parametrize("case", KEYS["node_ids"], ids=lambda c: c["node_id"][:8])
def test_node_id_vector(case):
    public = bytes.fromhex(case["public_key"])
    assert case["node_id"] == hashlib.sha1(public).hexdigest() == node_id_of(public).hex()


def spec_fields(case: dict) -> list:
    fields = [
        case["kind"],
        bytes.fromhex(case["public_key"]),
        case["issued"],
        case["expires"],
        case["endpoint"],
    ]
    if case["kind"] == 2:
        fields.append(case["outputs"])
    return fields


@pytest.mark.parametrize("case", RECORDS["valid"], ids=lambda c: c["name"])
def test_valid_record_vector_follows_the_spec(case):
    key, record = bytes.fromhex(case["key"]), bytes.fromhex(case["record"])
    body, signature = umsgpack.unpackb(record)
    assert umsgpack.packb([body, signature]) == record
    assert umsgpack.unpackb(body) == spec_fields(case)
    assert umsgpack.packb(spec_fields(case)) == body  # canonical
    message = b"p2pcache-dht-record-v1\x00" + key + body
    nacl.signing.VerifyKey(bytes.fromhex(case["public_key"])).verify(message, signature)
    assert len(record) <= 1024
    assert case["expires"] - case["issued"] <= 86400
    assert case["expires"] > NOW and case["issued"] <= NOW + 300


@pytest.mark.parametrize("case", RECORDS["valid"], ids=lambda c: c["name"])
def test_valid_record_vector_decodes(case):
    signed = decode_record(bytes.fromhex(case["key"]), bytes.fromhex(case["record"]), NOW)
    record = signed.record
    assert record.public_key.hex() == case["public_key"]
    assert record.node_id.hex() == case["node_id"]
    assert (record.endpoint, record.issued, record.expires) == (
        case["endpoint"],
        case["issued"],
        case["expires"],
    )
    assert int(record.kind) == case["kind"]
    if isinstance(record, OutputsRecord):
        assert [list(pair) for pair in record.outputs] == case["outputs"]
    assert signed.encoded.hex() == case["record"]


@pytest.mark.parametrize("case", RECORDS["invalid"], ids=lambda c: c["name"])
def test_invalid_record_vector_is_refused_with_its_reason(case):
    with pytest.raises(RecordError) as raised:
        decode_record(bytes.fromhex(case["key"]), bytes.fromhex(case["record"]), NOW)
    assert raised.value.reason == case["reason"]
    assert isinstance(raised.value, FormatError)


@pytest.mark.parametrize("case", VALUES["cases"], ids=lambda c: c["name"])
def test_value_vector(case):
    decoded = decode_value(bytes.fromhex(case["key"]), bytes.fromhex(case["value"]), VALUES["now"])
    assert len(decoded.records) == case["accepted"]
    assert [error.reason for error in decoded.rejected] == case["rejected"]


def test_eight_records_fit_one_unfragmented_reply():
    case = next(c for c in VALUES["cases"] if c["name"] == "eight-providers-one-reply")
    value = bytes.fromhex(case["value"])
    datagram = b"\x01" + b"\x00" * 20 + umsgpack.packb({"value": value})
    assert len(value) <= REPLY_VALUE_BUDGET
    assert len(datagram) < 1200


# -- the format's properties -----------------------------------------------------------------


def provider(endpoint="http://192.0.2.1:8081", issued=NOW - 10, ttl=3600, public=PUBLIC):
    return ProviderRecord(public, endpoint, issued, issued + ttl)


endpoints = st.from_regex(
    r"https?://[a-z0-9.-]{1,60}(:[0-9]{1,5})?(/[a-z0-9/_-]{0,40})?", fullmatch=True
)


@settings(max_examples=60, deadline=None)
@given(
    endpoint=endpoints,
    issued=st.integers(NOW - MAX_TTL + 1, NOW + 300),
    ttl=st.integers(1, MAX_TTL),
    hash_part=st.text("0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32),
)
def test_signed_provider_records_round_trip(endpoint, issued, ttl, hash_part):
    if issued + ttl <= NOW:
        issued = NOW - ttl + 1
    key = provider_key(hash_part)
    signed = sign_record(key, provider(endpoint, issued, ttl), SIGNER)
    assert decode_record(key, signed.encoded, NOW) == signed
    assert decode_value(key, encode_value([signed]), NOW).records == (signed,)


@settings(max_examples=40, deadline=None)
@given(
    outputs=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
        st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True),
        min_size=1,
        max_size=4,
    )
)
def test_signed_outputs_records_round_trip(outputs):
    paths = {name: f"/gnu/store/{HASH}-{stem}" for name, stem in outputs.items()}
    key = outputs_key(HASH)
    record = OutputsRecord(PUBLIC, "http://192.0.2.1:8081", NOW, NOW + 60, make_outputs(paths))
    signed = sign_record(key, record, SIGNER)
    decoded = decode_record(key, signed.encoded, NOW)
    assert decoded.record.output_paths() == paths


def test_replies_hold_at_most_eight_records_and_1150_bytes():
    key = provider_key(HASH)
    records = []
    for i in range(32):
        signer = nacl.signing.SigningKey(hashlib.sha256(b"%d" % i).digest())
        endpoint = f"https://provider-{i:02d}.example.org:8081/p2p"
        public = bytes(signer.verify_key)
        records.append(sign_record(key, provider(endpoint, public=public), signer))
    rng = random.Random(1)
    seen = set()
    for _ in range(20):
        value = select_for_reply(records, rng)
        decoded = decode_value(key, value, NOW)
        assert 1 <= len(decoded.records) <= MAX_REPLY_RECORDS
        assert len(value) <= REPLY_VALUE_BUDGET
        seen.update(r.record.public_key for r in decoded.records)
    assert len(seen) > MAX_REPLY_RECORDS  # the subset is random: replies differ


def test_signing_refuses_what_a_receiver_would_refuse():
    key = provider_key(HASH)
    with pytest.raises(RecordTtlError):
        sign_record(key, provider(ttl=MAX_TTL + 1), SIGNER)
    with pytest.raises(RecordMalformedError):
        sign_record(key, provider(public=bytes(32)), SIGNER)  # not the signer's key
    with pytest.raises(RecordMalformedError):
        sign_record(key, provider(endpoint="gopher://x"), SIGNER)
    with pytest.raises(RecordOversizeError):
        sign_record(key, provider(endpoint="http://" + "x" * 130), SIGNER)
    many = {f"o{i:02d}": f"/gnu/store/{HASH}-{'x' * 60}-{i}" for i in range(16)}
    with pytest.raises(RecordOversizeError):
        sign_record(
            outputs_key(HASH),
            OutputsRecord(PUBLIC, "http://x", NOW, NOW + 60, make_outputs(many)),
            SIGNER,
        )


def test_a_record_is_bound_to_its_key():
    signed = sign_record(provider_key(HASH), provider(), SIGNER)
    other = provider_key("1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw")
    assert [e.reason for e in decode_value(other, encode_value([signed]), NOW).rejected] == [
        "bad_signature"
    ]


def test_keys_need_a_valid_hash_part():
    with pytest.raises(FormatError):
        provider_key("not-a-hash")
    with pytest.raises(FormatError):
        outputs_key("e" * 32)  # e is not in the nix-base32 alphabet


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_records_or_reasons_never_an_exception(data):
    decoded = decode_value(provider_key(HASH), data, NOW)
    assert len(decoded.records) + len(decoded.rejected) >= 1 or data[:1] == b"\x90"
    with contextlib.suppress(RecordError):
        decode_record(provider_key(HASH), data, NOW)


def test_verification_cache_still_checks_lifetime():
    key = provider_key(HASH)
    signed = sign_record(key, provider(issued=NOW - 10, ttl=20), SIGNER)
    cache: dict = {}
    assert decode_value(key, encode_value([signed]), NOW, cache).records == (signed,)
    later = decode_value(key, encode_value([signed]), NOW + 10, cache)
    assert [e.reason for e in later.rejected] == ["expired"]
