"""DHT records: "node N serves item H at endpoint E until T", signed, as protocol/dht.md v1 says.

Pure: bytes in, frozen dataclasses out, and back; the time is always an argument (no clock, no
I/O, no configuration). Two kinds of record share one envelope:

* a provider record, stored under `provider_key(hash_part)`: the node serves that store item
  at its peer endpoint;
* an outputs record, stored under `outputs_key(drv_hash_part)`: the node holds these output
  paths (output name -> store path) of that derivation.

A record on the wire is the msgpack array `[body, signature]`. The body is itself msgpack
bytes, and the Ed25519 signature covers `SIGNATURE_DOMAIN || DHT key || body`: signing the
exact bytes (rather than a structure re-encoded by the verifier) keeps implementations with
different msgpack libraries interoperable, and the DHT key in the signed message binds the
record to the key it was announced under, so it cannot be replayed under another item. The
body must still be in canonical form (shortest encodings), so a record's bytes are a function
of its content. A DHT value is the msgpack array of such records, as `bytes`, so that a stock
kademlia node stores and relays it as an opaque blob.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

import nacl.exceptions
import nacl.signing

from p2pcache.errors import FormatError
from p2pcache.guix.store_path import check_hash_part, parse_basename
from p2pcache.net.msgpack_codec import MsgpackError, pack, unpack

PROVIDER_KEY_DOMAIN = b"p2pcache-provider-v1\0"
OUTPUTS_KEY_DOMAIN = b"p2pcache-drv-outputs-v1\0"
SIGNATURE_DOMAIN = b"p2pcache-dht-record-v1\0"

KEY_SIZE = 20  # SHA-1, kademlia's 160-bit id space
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# A record's lifetime is at most a day: a provider that vanishes stops being advertised within
# 24 h even if every holder keeps its copy (the stock library republishes forever).
MAX_TTL = 24 * 3600
# Tolerated clock difference between the signer and the receiver, for `issued`.
CLOCK_SKEW = 300
# One record (the encoded [body, signature] array) is at most this many bytes. A provider
# record with a 30-byte endpoint is about 145 bytes; the limit leaves room for outputs records.
MAX_RECORD_SIZE = 1024
MAX_ENDPOINT_LENGTH = 128
MAX_OUTPUTS = 16
MAX_OUTPUT_NAME_LENGTH = 64
# A DHT value (what STORE carries) is at most this many bytes and records: it must fit in one
# rpcudp request, whose sender refuses more than 8,192 bytes of msgpack.
MAX_VALUE_SIZE = 8000
MAX_RECORDS_PER_VALUE = 64
# A FIND_VALUE reply carries at most this many records and value bytes, so the whole datagram
# (about 31 bytes of framing) stays under 1,200 bytes and is never IP-fragmented.
MAX_REPLY_RECORDS = 8
REPLY_VALUE_BUDGET = 1150
_TIME_LIMIT = 1 << 63

_OUTPUT_NAME = re.compile(r"[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*\Z")
_ENDPOINT_SCHEMES = ("http://", "https://")


class RecordKind(IntEnum):
    """The first element of a body; a new incompatible layout gets a new number."""

    PROVIDER = 1
    OUTPUTS = 2


class RecordError(FormatError):
    """A DHT record or value is not acceptable; `reason` is a stable word for metrics."""

    reason: ClassVar[str] = "malformed"


class RecordMalformedError(RecordError):
    """The bytes do not have the layout protocol/dht.md describes."""

    reason = "malformed"


class RecordOversizeError(RecordError):
    """A record or value is larger than the protocol allows."""

    reason = "oversize"


class RecordSignatureError(RecordError):
    """The signature does not verify for this DHT key (forged, tampered, or replayed)."""

    reason = "bad_signature"


class RecordExpiredError(RecordError):
    """The record's signed expiry has passed."""

    reason = "expired"


class RecordTtlError(RecordError):
    """The record claims a lifetime longer than MAX_TTL."""

    reason = "ttl_too_long"


class RecordNotYetValidError(RecordError):
    """The record was issued further in the future than the tolerated clock skew."""

    reason = "not_yet_valid"


REJECTION_REASONS = (
    "malformed",
    "oversize",
    "bad_signature",
    "expired",
    "ttl_too_long",
    "not_yet_valid",
)


def provider_key(hash_part: str) -> bytes:
    """The DHT key under which providers of the store item with this hash part are announced."""
    check_hash_part(hash_part)
    return hashlib.sha1(PROVIDER_KEY_DOMAIN + hash_part.encode("ascii")).digest()


def outputs_key(drv_hash_part: str) -> bytes:
    """The DHT key under which holders of a derivation's outputs are announced.

    `drv_hash_part` is the hash part of the `.drv` store path.
    """
    check_hash_part(drv_hash_part)
    return hashlib.sha1(OUTPUTS_KEY_DOMAIN + drv_hash_part.encode("ascii")).digest()


def node_id_of(public_key: bytes) -> bytes:
    """A node's kademlia id: SHA-1 of its Ed25519 public key (160 bits, kademlia's id space)."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise RecordMalformedError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return hashlib.sha1(public_key).digest()


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """The node with `public_key` serves the item at `endpoint` from `issued` until `expires`."""

    public_key: bytes
    endpoint: str
    issued: int
    expires: int
    kind: ClassVar[RecordKind] = RecordKind.PROVIDER

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)


@dataclass(frozen=True, slots=True)
class OutputsRecord:
    """The node holds these outputs of a derivation: (output name, store path basename) pairs.

    `outputs` is sorted by output name, names unique; a basename is `<hash>-<name>`, the store
    directory being the network's (/gnu/store).
    """

    public_key: bytes
    endpoint: str
    issued: int
    expires: int
    outputs: tuple[tuple[str, str], ...]
    kind: ClassVar[RecordKind] = RecordKind.OUTPUTS

    @property
    def node_id(self) -> bytes:
        return node_id_of(self.public_key)

    def output_paths(self, store_dir: str = "/gnu/store") -> dict[str, str]:
        """Output name -> full store path."""
        return {name: f"{store_dir}/{basename}" for name, basename in self.outputs}


Record = ProviderRecord | OutputsRecord


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record with its exact body bytes and signature, bound to one DHT key."""

    key: bytes
    record: Record
    body: bytes
    signature: bytes
    encoded: bytes = field(repr=False)  # the wire form, msgpack [body, signature]

    @property
    def identity(self) -> tuple[bytes, RecordKind]:
        """What "newest per node" is keyed on: one record per signer and kind under a key."""
        return (self.record.public_key, self.record.kind)

    def is_newer_than(self, other: SignedRecord) -> bool:
        """Later `issued` wins; on a tie the later expiry; on a tie again the existing one."""
        return (self.record.issued, self.record.expires) > (
            other.record.issued,
            other.record.expires,
        )


@dataclass(frozen=True, slots=True)
class DecodedValue:
    """The acceptable records of a DHT value, and why the others were refused."""

    records: tuple[SignedRecord, ...]
    rejected: tuple[RecordError, ...]


def make_outputs(outputs: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Normalize output name -> store path (or basename) into an OutputsRecord's `outputs`."""
    pairs = []
    for name, path in outputs.items():
        basename = path.rsplit("/", 1)[-1]
        pairs.append((name, basename))
    return tuple(sorted(pairs))


def signed_message(key: bytes, body: bytes) -> bytes:
    """What the Ed25519 signature covers: domain, then the 20-byte DHT key, then the body."""
    return SIGNATURE_DOMAIN + key + body


def encode_body(record: Record) -> bytes:
    """The canonical msgpack body of `record`; raises RecordError if a field is out of range."""
    _check_fields(record)
    fields: list[object] = [
        int(record.kind),
        record.public_key,
        record.issued,
        record.expires,
        record.endpoint,
    ]
    if isinstance(record, OutputsRecord):
        fields.append([[name, basename] for name, basename in record.outputs])
    return pack(fields)


def sign_record(key: bytes, record: Record, signing_key: nacl.signing.SigningKey) -> SignedRecord:
    """Sign `record` for DHT `key` with the node's identity key.

    Requires `record.public_key` to be the public half of `signing_key`, and the record to be
    within the protocol's limits (size, TTL); raises RecordError otherwise.
    """
    _check_key(key)
    if bytes(signing_key.verify_key) != record.public_key:
        raise RecordMalformedError("the record's public key is not the signing key's")
    _check_lifetime(record)
    body = encode_body(record)
    signature = signing_key.sign(signed_message(key, body)).signature
    encoded = pack([body, signature])
    if len(encoded) > MAX_RECORD_SIZE:
        raise RecordOversizeError(
            f"the record is {len(encoded)} bytes, more than the {MAX_RECORD_SIZE} allowed"
        )
    return SignedRecord(key, record, body, signature, encoded)


def decode_record(key: bytes, data: bytes, now: float) -> SignedRecord:
    """Parse and check one encoded record (msgpack [body, signature]) found under `key`.

    Checks, in this order (the first failure is the reason): size, layout, canonical form,
    lifetime (TTL, expiry, issue time) and finally the signature, so that junk costs no
    signature verification.
    """
    if len(data) > MAX_RECORD_SIZE:
        raise RecordOversizeError(
            f"the record is {len(data)} bytes, more than the {MAX_RECORD_SIZE} allowed"
        )
    return _decode_item(key, _unpack(data, "record"), now, len(data))


def encode_value(records: Iterable[SignedRecord]) -> bytes:
    """The DHT value (msgpack array) holding these records, built from their encoded bytes."""
    encoded = [r.encoded for r in records]
    return _array_header(len(encoded)) + b"".join(encoded)


def decode_value(
    key: bytes,
    value: object,
    now: float,
    verified: dict[tuple[bytes, bytes], SignedRecord] | None = None,
) -> DecodedValue:
    """Split a DHT value found under `key` into acceptable records and rejections.

    A value that is not bytes, too large, or not a msgpack array of at most
    MAX_RECORDS_PER_VALUE items is rejected as a whole (one error); otherwise each record is
    judged on its own, so one bad record does not hide the good ones beside it.

    `verified`, if given, remembers records (by body and signature) already checked under
    this key, so that a lookup hearing the same record from twenty holders verifies its
    signature once; their lifetime is still checked against `now` every time.
    """
    try:
        items = _value_items(value)
    except RecordError as error:
        return DecodedValue((), (error,))
    accepted: list[SignedRecord] = []
    rejected: list[RecordError] = []
    for item in items:
        try:
            known = None
            if verified is not None and isinstance(item, list) and len(item) == 2:
                known = verified.get((item[0], item[1]))  # type: ignore[arg-type]
            if known is not None and known.key == key:
                check_lifetime(known.record, now)
                accepted.append(known)
                continue
            record = _decode_item(key, item, now, None)
            if verified is not None:
                verified[(record.body, record.signature)] = record
            accepted.append(record)
        except RecordError as error:
            rejected.append(error)
    return DecodedValue(tuple(accepted), tuple(rejected))


def select_for_reply(
    records: Sequence[SignedRecord],
    rng: random.Random,
    *,
    max_records: int = MAX_REPLY_RECORDS,
    budget: int = REPLY_VALUE_BUDGET,
) -> bytes:
    """A value of a random subset of `records`: at most `max_records`, at most `budget` bytes.

    Random, so that repeated lookups from different nodes see different providers and load
    spreads over all of them (a holder keeps up to 32 records per key, a reply carries 8).
    """
    order = list(records)
    rng.shuffle(order)
    chosen: list[SignedRecord] = []
    size = 1
    for record in order:
        if len(chosen) == max_records:
            break
        if size + len(record.encoded) > budget:
            continue
        chosen.append(record)
        size += len(record.encoded)
    return encode_value(chosen)


def check_lifetime(record: Record, now: float) -> None:
    """Raise unless `record` is valid at `now`: TTL at most a day, not expired, not future."""
    _check_lifetime(record)
    if record.expires <= now:
        raise RecordExpiredError(f"the record expired at {record.expires} (now {int(now)})")
    if record.issued > now + CLOCK_SKEW:
        raise RecordNotYetValidError(
            f"the record is issued at {record.issued}, more than {CLOCK_SKEW} s after now "
            f"({int(now)})"
        )


def _check_lifetime(record: Record) -> None:
    if record.expires <= record.issued:
        raise RecordMalformedError("the record expires before it is issued")
    if record.expires - record.issued > MAX_TTL:
        raise RecordTtlError(
            f"the record lives {record.expires - record.issued} s, more than {MAX_TTL} s"
        )


def _check_key(key: object) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise RecordMalformedError("a DHT key is 20 bytes")


def _check_fields(record: Record) -> None:
    if not isinstance(record.public_key, bytes) or len(record.public_key) != PUBLIC_KEY_SIZE:
        raise RecordMalformedError("the public key is not 32 bytes")
    for name in ("issued", "expires"):
        value = getattr(record, name)
        if type(value) is not int or not 0 <= value < _TIME_LIMIT:
            raise RecordMalformedError(f"{name} is not a non-negative integer of 63 bits")
    _check_endpoint(record.endpoint)
    if isinstance(record, OutputsRecord):
        _check_outputs(record.outputs)


def _check_endpoint(endpoint: object) -> None:
    if not isinstance(endpoint, str) or not endpoint.startswith(_ENDPOINT_SCHEMES):
        raise RecordMalformedError("the endpoint is not an http:// or https:// URL")
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise RecordOversizeError(
            f"the endpoint is {len(endpoint)} characters, more than {MAX_ENDPOINT_LENGTH}"
        )
    if not endpoint.isascii() or not endpoint.isprintable() or " " in endpoint:
        raise RecordMalformedError("the endpoint contains characters a URL cannot have")


def _check_outputs(outputs: object) -> None:
    if not isinstance(outputs, tuple) or not 1 <= len(outputs) <= MAX_OUTPUTS:
        raise RecordMalformedError(f"an outputs record lists 1 to {MAX_OUTPUTS} outputs")
    previous = ""
    for pair in outputs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise RecordMalformedError("an output is a (name, basename) pair")
        name, basename = pair
        if (
            not isinstance(name, str)
            or len(name) > MAX_OUTPUT_NAME_LENGTH
            or not _OUTPUT_NAME.match(name)
        ):
            raise RecordMalformedError(f"{str(name)[:70]!r} is not a valid output name")
        if name <= previous:
            raise RecordMalformedError("output names are not sorted and unique")
        previous = name
        if not isinstance(basename, str):
            raise RecordMalformedError("an output path is not a string")
        try:
            parse_basename(basename)
        except FormatError as error:
            raise RecordMalformedError(f"output {name!r}: {error}") from None


def _unpack(data: bytes, what: str) -> object:
    try:
        return unpack(data)
    except MsgpackError as error:
        raise RecordMalformedError(f"the {what} is not valid msgpack: {error}") from None


def _value_items(value: object) -> list[object]:
    if not isinstance(value, bytes):
        raise RecordMalformedError("a DHT value is a byte string")
    if len(value) > MAX_VALUE_SIZE:
        raise RecordOversizeError(
            f"the value is {len(value)} bytes, more than the {MAX_VALUE_SIZE} allowed"
        )
    items = _unpack(value, "value")
    if not isinstance(items, list):
        raise RecordMalformedError("a DHT value is a msgpack array of records")
    if len(items) > MAX_RECORDS_PER_VALUE:
        raise RecordOversizeError(
            f"the value holds {len(items)} records, more than {MAX_RECORDS_PER_VALUE}"
        )
    return items


def _decode_item(key: bytes, item: object, now: float, size: int | None) -> SignedRecord:
    _check_key(key)
    if not isinstance(item, list) or len(item) != 2:
        raise RecordMalformedError("a record is a msgpack array [body, signature]")
    body, signature = item
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise RecordMalformedError("a record's body and signature are byte strings")
    encoded = pack([body, signature])
    if size is not None and size != len(encoded):
        raise RecordMalformedError("the record is not in canonical msgpack form")
    if len(encoded) > MAX_RECORD_SIZE:
        raise RecordOversizeError(
            f"the record is {len(encoded)} bytes, more than the {MAX_RECORD_SIZE} allowed"
        )
    if len(signature) != SIGNATURE_SIZE:
        raise RecordMalformedError("an Ed25519 signature is 64 bytes")
    record = _parse_body(body)
    check_lifetime(record, now)
    try:
        nacl.signing.VerifyKey(record.public_key).verify(signed_message(key, body), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        raise RecordSignatureError(
            "the signature does not verify for this DHT key (forged, tampered or replayed)"
        ) from None
    return SignedRecord(key, record, body, signature, encoded)


def _parse_body(body: bytes) -> Record:
    fields = _unpack(body, "record body")
    if not isinstance(fields, list) or len(fields) < 5:
        raise RecordMalformedError("a record body is a msgpack array of at least 5 fields")
    kind, public_key, issued, expires, endpoint = fields[:5]
    if type(kind) is not int:
        raise RecordMalformedError("the record kind is not an integer")
    if not isinstance(public_key, bytes):
        raise RecordMalformedError("the public key is not a byte string")
    record: Record
    if kind == RecordKind.PROVIDER and len(fields) == 5:
        record = ProviderRecord(public_key, endpoint, issued, expires)
    elif kind == RecordKind.OUTPUTS and len(fields) == 6:
        record = OutputsRecord(public_key, endpoint, issued, expires, _parse_outputs(fields[5]))
    else:
        raise RecordMalformedError(f"unknown record kind {kind} with {len(fields)} fields")
    if encode_body(record) != body:
        raise RecordMalformedError("the record body is not in canonical msgpack form")
    return record


def _parse_outputs(raw: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise RecordMalformedError("the outputs field is not an array")
    pairs = []
    for pair in raw:
        if not isinstance(pair, list) or len(pair) != 2:
            raise RecordMalformedError("an output is a [name, basename] array")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")
