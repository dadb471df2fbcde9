"""Accepting a narinfo that a peer or an upstream server relays: Guix's own rule, and ours.

A relayed narinfo is accepted when it is signed by a key in the node's Guix ACL (what the
local Guix already trusts, such as the official build farms), exactly as `guix substitute`
would judge it, and when it describes the requested item under the network's store
directory. It must be in the current layout, whose signed part holds only StorePath, NarHash,
NarSize, References (and Deriver/System): the node relays that signed part byte for byte and
appends its OWN URL groups, which an old-layout narinfo (URL/Compression/FileSize inside the
signed part) would contradict. NarSize must be signed too: it becomes the Content-Length the
node promises to Guix.

Pure: bytes and keys in, an accepted narinfo or a NarinfoRejected with its reason out.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcache.errors import FormatError, P2PCacheError
from p2pcache.guix.narinfo import Narinfo, parse_nar_hash, parse_narinfo
from p2pcache.guix.narinfo_signature import SignatureStatus, verify_parsed_narinfo
from p2pcache.guix.signing_key import GuixPublicKey
from p2pcache.guix.store_path import parse_store_path

_OLD_LAYOUT_FIELDS = {"URL", "Compression", "FileSize", "FileHash"}
_REQUIRED_SIGNED = {"StorePath", "NarHash", "NarSize", "References"}


class NarinfoRejected(P2PCacheError):
    """A relayed narinfo is not acceptable; `reason` is a short word for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        # Refusals cross process boundaries (narinfo_check_pool); the default would call
        # NarinfoRejected(message) and fail.
        return (type(self), (self.reason, str(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NarinfoRejected):
            return NotImplemented
        return (self.reason, str(self)) == (other.reason, str(other))

    def __hash__(self) -> int:
        return hash((self.reason, str(self)))


@dataclass(frozen=True, slots=True)
class AcceptedNarinfo:
    narinfo: Narinfo
    signed_part: bytes
    signature_line: bytes
    """The whole `Signature: …\\n` line, byte for byte."""
    nar_size: int


def signature_line_of(data: bytes, signed_part: bytes) -> bytes:
    """The Signature line that follows the signed part, LF included."""
    rest = data[len(signed_part) :]
    end = rest.find(b"\n")
    if not rest.startswith(b"Signature:") or end < 0:
        raise NarinfoRejected("malformed", "the Signature field is not a whole line")
    return rest[: end + 1]


def check_described_item(narinfo: Narinfo, hash_part: str, store_dir: str) -> bytes:
    """Check the narinfo describes the requested item usably; returns its NarHash digest."""
    try:
        path = parse_store_path(narinfo.store_path or "", store_dir)
        nar_hash = parse_nar_hash(narinfo.nar_hash or "")
    except FormatError as e:
        raise NarinfoRejected("malformed", str(e)) from None
    if path.hash_part != hash_part:
        raise NarinfoRejected("wrong-item", f"narinfo is for {path}, not {hash_part}")
    if narinfo.nar_size is None or narinfo.nar_size <= 0:
        raise NarinfoRejected("malformed", "narinfo has no usable NarSize")
    if narinfo.references is None:
        raise NarinfoRejected("malformed", "narinfo has no References")
    return nar_hash


def accept_relayed_narinfo(
    data: bytes,
    hash_part: str,
    acl: list[GuixPublicKey],
    store_dir: str = "/gnu/store",
) -> AcceptedNarinfo:
    try:
        narinfo = parse_narinfo(data)
    except FormatError as e:
        raise NarinfoRejected("malformed", f"unreadable narinfo: {e}") from None
    status, signed_fields = verify_parsed_narinfo(narinfo, acl)
    if status is not SignatureStatus.VALID:
        raise NarinfoRejected(str(status), f"narinfo signature: {status}")
    signed_part = narinfo.signed_part
    assert signed_part is not None  # a valid signature implies a signed part
    if signed_fields & _OLD_LAYOUT_FIELDS:
        raise NarinfoRejected("old-layout", "the signed part contains URL groups (old layout)")
    missing = _REQUIRED_SIGNED - signed_fields
    if missing:
        names = ", ".join(sorted(missing))
        raise NarinfoRejected("unsigned-fields", f"{names} not covered by the signature")
    check_described_item(narinfo, hash_part, store_dir)
    return AcceptedNarinfo(
        narinfo, signed_part, signature_line_of(data, signed_part), narinfo.nar_size
    )
