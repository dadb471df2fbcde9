"""Builder attestations (protocol/attestation.md): a builder's signed word for one store item.

An attestation says "I, builder K, built store path P; its NAR has this hash, size, chunk root
and these references". It is text in the spirit of a narinfo, but canonical: a fixed header
line, ten fields in a fixed order, each written exactly one way (no optional whitespace,
sorted references, lowercase hex, canonical base64, decimal without leading zeros, LF line
ends), then the Ed25519 signature line. So an attestation has exactly one byte form, its log leaf
hash is well defined, and `render(parse(x)) == x` for every accepted `x` (the parser checks it).

The signature covers every byte before the `Signature:` line. Its first line,
`p2pcache-attestation/v1`, is the domain separation: nothing else a node's identity key signs
(checkpoint notes, which begin with a `p2pcache/builder/` origin; witness cosignatures, which
begin with `cosignature/v1`) can begin with it.

Pure: bytes in, values out; the time is a field, never read from a clock here.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from p2pcache.errors import FormatError, NarinfoFormatError, P2PCacheError, StorePathError
from p2pcache.guix import nix32
from p2pcache.guix.narinfo import format_nar_hash, parse_nar_hash
from p2pcache.guix.store_path import check_store_dir, parse_basename
from p2pcache.trust.signed_note import NoteFormatError, decode_canonical_base64

HEADER = "p2pcache-attestation/v1"
FIELDS = (
    "Builder",
    "StorePath",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Time",
    "ChunkRoot",
    "Evidence",
)
"""The statement's fields, in their one order; `Signature` follows them."""

# A narinfo (at most 1 MiB) lists every reference; an attestation must be able to say the same.
# Real items have at most a few hundred references of about 60 bytes each.
MAX_ATTESTATION_SIZE = 1 << 20
MAX_REFERENCES = 4096
MAX_VALUE = (1 << 63) - 1
"""NarSize and Time are at most 2**63 - 1: they fit a signed 64-bit integer (SQLite's)."""

MAX_SYSTEM_LENGTH = 64
_SYSTEM = re.compile(r"[a-z0-9_]+(?:-[a-z0-9_]+)+")
_TEXT = re.compile(rb"[\x20-\x7e\n]*")
_LOWER_HEX_32 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"[0-9]+")
# A store path basename as the daemon's checkStoreName and Guix's hash rules allow it: 32
# nix-base32 characters, a dash, a name of 1..211 characters from [A-Za-z0-9+-._?=] that does
# not start with a dot. A fast path only: anything it refuses goes through store_path.py for the
# precise error, and tests/trust/test_attestation.py checks that both agree.
_BASENAME = re.compile(rf"[{nix32.ALPHABET}]{{32}}-(?!\.)[A-Za-z0-9+\-._?=]{{1,211}}")


class AttestationFormatError(FormatError):
    """Attestation bytes are not a canonical attestation (protocol/attestation.md).

    `reason` is the stable code the protocol's vectors use: oversized, encoding, structure,
    version, whitespace, value, non-canonical, too-many-references.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AttestationVerificationError(P2PCacheError):
    """A well-formed attestation that does not count: bad signature, other builder, other item.

    `reason`: bad-signature, wrong-builder or wrong-store-path.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Evidence(enum.Enum):
    """Why the builder says it built the item itself.

    `build-log`: the daemon kept a build log for a local build; `check`: a rebuild with
    `guix build --check` reproduced it; `forced`: no evidence, the operator said `--force`.
    """

    BUILD_LOG = "build-log"
    CHECK = "check"
    FORCED = "forced"

    @property
    def is_forced(self) -> bool:
        return self is Evidence.FORCED


@dataclass(frozen=True, slots=True)
class Attestation:
    """The statement a builder signs; constructing one validates every field.

    `builder` is the builder's Ed25519 public key; `store_path` a full store path;
    `references` and `deriver` are basenames in the same store (kept sorted, as written);
    `nar_hash` and `chunk_root` are 32-byte digests; `time` is POSIX seconds.
    """

    builder: bytes
    store_path: str
    nar_hash: bytes
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None
    system: str
    time: int
    chunk_root: bytes
    evidence: Evidence

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(sorted(self.references)))
        _check_attestation(self)


@dataclass(frozen=True, slots=True)
class SignedAttestation:
    """An attestation with its builder's signature (not yet verified, if just parsed)."""

    attestation: Attestation
    signature: bytes
    statement: bytes = field(init=False, repr=False, compare=False)
    """The signed message, `render_statement(attestation)`, rendered once."""

    def __post_init__(self) -> None:
        if len(self.signature) != 64:
            raise AttestationFormatError(
                f"an attestation signature is 64 bytes, not {len(self.signature)}", "value"
            )
        object.__setattr__(self, "statement", render_statement(self.attestation))

    def render(self) -> bytes:
        return render_attestation(self)


def render_statement(attestation: Attestation) -> bytes:
    """The signed part: the header line and the ten fields, each line ending in LF."""
    a = attestation
    values = (
        a.builder.hex(),
        a.store_path,
        format_nar_hash(a.nar_hash),
        str(a.nar_size),
        " ".join(a.references),
        a.deriver or "",
        a.system,
        str(a.time),
        a.chunk_root.hex(),
        a.evidence.value,
    )
    lines = [HEADER] + [_field_line(n, v) for n, v in zip(FIELDS, values, strict=True)]
    return ("\n".join(lines) + "\n").encode("ascii")


def render_attestation(signed: SignedAttestation) -> bytes:
    """The whole attestation: statement, then `Signature: <base64>` and LF."""
    signature = base64.b64encode(signed.signature).decode("ascii")
    return signed.statement + f"Signature: {signature}\n".encode("ascii")


def sign_attestation(
    attestation: Attestation, signing_key: nacl.signing.SigningKey
) -> SignedAttestation:
    """Sign with the builder's identity key, which must be the one the attestation names."""
    if bytes(signing_key.verify_key) != attestation.builder:
        raise ValueError("the signing key is not the builder key the attestation names")
    signature = signing_key.sign(render_statement(attestation)).signature
    return SignedAttestation(attestation, signature)


def verify_attestation(signed: SignedAttestation, builder_key: bytes) -> Attestation:
    """Check that `builder_key` (a trusted builder's public key) signed this attestation.

    Raises AttestationVerificationError: `wrong-builder` when the attestation names another
    builder, `bad-signature` when the signature does not verify (a forgery, or a statement
    edited after signing). Whether the key is trusted is the caller's question.
    """
    attestation = signed.attestation
    if attestation.builder != builder_key:
        raise AttestationVerificationError(
            f"the attestation for {attestation.store_path} names builder "
            f"{attestation.builder.hex()[:16]}…, not {builder_key.hex()[:16]}…",
            "wrong-builder",
        )
    try:
        nacl.signing.VerifyKey(builder_key).verify(signed.statement, signed.signature)
    except nacl.exceptions.BadSignatureError:
        raise AttestationVerificationError(
            f"the signature of builder {builder_key.hex()[:16]}… on the attestation for "
            f"{attestation.store_path} does not verify",
            "bad-signature",
        ) from None
    return attestation


def check_store_path(attestation: Attestation, store_path: str) -> None:
    """Refuse an attestation replayed for another item than the one it was signed for."""
    if attestation.store_path != store_path:
        raise AttestationVerificationError(
            f"the attestation is for {attestation.store_path}, not {store_path}",
            "wrong-store-path",
        )


def parse_attestation(data: bytes, *, max_size: int = MAX_ATTESTATION_SIZE) -> SignedAttestation:
    """Parse canonical attestation bytes; the signature is not checked here.

    Raises AttestationFormatError whose `reason` says which rule was broken.
    """
    if len(data) > max_size:
        raise AttestationFormatError(
            f"attestation is {len(data)} bytes, more than the {max_size} allowed", "oversized"
        )
    if not _TEXT.fullmatch(data):
        bad = next(i for i, b in enumerate(data) if not (0x20 <= b <= 0x7E or b == 0x0A))
        raise AttestationFormatError(
            f"attestation byte {bad} is {data[bad]:#04x}; only printable ASCII and LF are allowed",
            "encoding",
        )
    if not data.endswith(b"\n"):
        raise AttestationFormatError("attestation does not end with a line feed", "structure")
    lines = data[:-1].decode("ascii").split("\n")
    if lines[0] != HEADER:
        raise AttestationFormatError(
            f"attestation starts with {lines[0][:40]!r}, not {HEADER!r}", "version"
        )
    names = (*FIELDS, "Signature")
    if len(lines) != 1 + len(names):
        raise AttestationFormatError(
            f"attestation has {len(lines)} lines, not {1 + len(names)}", "structure"
        )
    values = [_field_value(line, name) for line, name in zip(lines[1:], names, strict=True)]
    fields = dict(zip(names, values, strict=True))
    signed = SignedAttestation(_attestation_from_fields(fields), _signature(fields["Signature"]))
    if render_attestation(signed) != data:
        # Every rule above is checked by name; this is the backstop that makes the form unique.
        raise AttestationFormatError("attestation is not in its canonical form", "non-canonical")
    return signed


def _field_line(name: str, value: str) -> str:
    return f"{name}: {value}" if value else f"{name}:"


def _field_value(line: str, name: str) -> str:
    prefix = name + ":"
    if not line.startswith(prefix):
        got = line.partition(":")[0][:40]
        raise AttestationFormatError(
            f"attestation line {got!r} is out of place: field {name!r} comes here", "structure"
        )
    rest = line[len(prefix) :]
    if not rest:
        return ""
    value = rest[1:]
    if not rest.startswith(" ") or not value or value != value.strip(" ") or "  " in value:
        raise AttestationFormatError(
            f"attestation field {name} is not '{name}: <value>' with single spaces", "whitespace"
        )
    if " " in value and name != "References":
        raise AttestationFormatError(f"attestation field {name} has a space in it", "value")
    return value


def _attestation_from_fields(fields: dict[str, str]) -> Attestation:
    references = tuple(fields["References"].split(" ")) if fields["References"] else ()
    if len(references) > MAX_REFERENCES:
        raise AttestationFormatError(
            f"attestation lists {len(references)} references, more than {MAX_REFERENCES}",
            "too-many-references",
        )
    if list(references) != sorted(set(references)):
        raise AttestationFormatError(
            "attestation references are not sorted, or repeat one", "non-canonical"
        )
    return Attestation(
        builder=_hex32(fields["Builder"], "Builder"),
        store_path=fields["StorePath"],
        nar_hash=_nar_hash(fields["NarHash"]),
        nar_size=_decimal(fields["NarSize"], "NarSize"),
        references=references,
        deriver=fields["Deriver"] or None,
        system=fields["System"],
        time=_decimal(fields["Time"], "Time"),
        chunk_root=_hex32(fields["ChunkRoot"], "ChunkRoot"),
        evidence=_evidence(fields["Evidence"]),
    )


def _check_attestation(a: Attestation) -> None:
    if len(a.builder) != 32:
        raise AttestationFormatError("the Builder key is not 32 bytes", "value")
    if len(a.nar_hash) != 32 or len(a.chunk_root) != 32:
        raise AttestationFormatError("NarHash and ChunkRoot are 32-byte digests", "value")
    if not 1 <= a.nar_size <= MAX_VALUE:
        raise AttestationFormatError(f"NarSize {a.nar_size} is out of range", "value")
    if not 0 <= a.time <= MAX_VALUE:
        raise AttestationFormatError(f"Time {a.time} is out of range", "value")
    if not isinstance(a.evidence, Evidence):
        raise AttestationFormatError(f"Evidence {a.evidence!r} is not an Evidence", "value")
    if len(a.references) > MAX_REFERENCES:
        raise AttestationFormatError(
            f"{len(a.references)} references, more than {MAX_REFERENCES}", "too-many-references"
        )
    if len(set(a.references)) != len(a.references):
        raise AttestationFormatError("a reference is listed twice", "non-canonical")
    if len(a.system) > MAX_SYSTEM_LENGTH or not _SYSTEM.fullmatch(a.system):
        raise AttestationFormatError(f"System {a.system[:40]!r} is not a Guix system", "value")
    store_dir, _, basename = a.store_path.rpartition("/")
    try:
        check_store_dir(store_dir)
        for name in (basename, *a.references, *([a.deriver] if a.deriver is not None else [])):
            if not _BASENAME.fullmatch(name):
                parse_basename(name, store_dir)  # raises with the precise reason
                raise StorePathError(f"{name[:80]!r} is not a store path basename")
    except StorePathError as e:
        raise AttestationFormatError(str(e), "value") from None
    if a.deriver is not None and not a.deriver.endswith(".drv"):
        raise AttestationFormatError(f"Deriver {a.deriver[:60]!r} is not a .drv", "value")


def _hex32(text: str, name: str) -> bytes:
    if _LOWER_HEX_32.fullmatch(text):
        return bytes.fromhex(text)
    if _LOWER_HEX_32.fullmatch(text.lower()):
        raise AttestationFormatError(f"{name} is not in lowercase hex", "non-canonical")
    raise AttestationFormatError(f"{name} {text[:70]!r} is not 64 hex digits", "value")


def _decimal(text: str, name: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise AttestationFormatError(f"{name} {text[:30]!r} is not a decimal number", "value")
    if len(text) > 1 and text.startswith("0"):
        raise AttestationFormatError(f"{name} {text[:30]!r} has leading zeros", "non-canonical")
    if len(text) > 19:
        raise AttestationFormatError(f"{name} {text[:30]!r} is out of range", "value")
    return int(text)


def _nar_hash(text: str) -> bytes:
    try:
        return parse_nar_hash(text)
    except NarinfoFormatError as e:
        raise AttestationFormatError(str(e), "value") from None


def _evidence(text: str) -> Evidence:
    try:
        return Evidence(text)
    except ValueError:
        choices = ", ".join(e.value for e in Evidence)
        raise AttestationFormatError(
            f"Evidence {text[:40]!r} is not one of {choices}", "value"
        ) from None


def _signature(text: str) -> bytes:
    try:
        raw = decode_canonical_base64(text, "the attestation signature")
    except NoteFormatError as e:
        reason = "non-canonical" if e.reason == "base64-non-canonical" else "value"
        raise AttestationFormatError(str(e), reason) from None
    if len(raw) != 64:
        raise AttestationFormatError(f"the signature is {len(raw)} bytes, not 64", "value")
    return raw
