"""What a relayed narinfo claims, whether or not a Guix ACL key signed it.

Under the `either` policy without builders, only an ACL-signed narinfo counts
(narinfo_acceptance). With builders, an unsigned (or foreign-signed) narinfo can still be
accepted when a quorum of them attests exactly what it says: its StorePath, NarHash, NarSize,
References and Deriver become an `ItemClaim` for the policy, and the ACL verdict rides along.

Pure: bytes and keys in, a claim (and the ACL acceptance, if any) or a NarinfoRejected out.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcache.errors import FormatError
from p2pcache.guix.narinfo import Narinfo, parse_narinfo
from p2pcache.guix.signing_key import GuixPublicKey
from p2pcache.trust.narinfo_acceptance import (
    AcceptedNarinfo,
    NarinfoRejected,
    accept_relayed_narinfo,
    check_described_item,
)
from p2pcache.trust.policy import ItemClaim


@dataclass(frozen=True, slots=True)
class RelayedNarinfo:
    narinfo: Narinfo
    claim: ItemClaim
    upstream: AcceptedNarinfo | None
    """The ACL acceptance (signed part kept byte for byte), when a trusted Guix key signed it."""
    upstream_refusal: NarinfoRejected | None
    """Why the ACL rule did not accept it, otherwise (the reason the old miss path gave)."""


def read_relayed_narinfo(
    data: bytes, hash_part: str, acl: list[GuixPublicKey], store_dir: str = "/gnu/store"
) -> RelayedNarinfo:
    """The claim of a relayed narinfo for `hash_part`; raises NarinfoRejected if it has none."""
    try:
        upstream: AcceptedNarinfo | None = accept_relayed_narinfo(data, hash_part, acl, store_dir)
        refusal = None
    except NarinfoRejected as e:
        upstream, refusal = None, e
    if upstream is not None:
        narinfo = upstream.narinfo  # already parsed
    else:
        try:
            narinfo = parse_narinfo(data)
        except FormatError as e:
            raise NarinfoRejected("malformed", f"unreadable narinfo: {e}") from None
    nar_hash = check_described_item(narinfo, hash_part, store_dir)
    assert narinfo.nar_size is not None and narinfo.references is not None
    claim = ItemClaim(
        store_path=narinfo.store_path or "",
        nar_hash=nar_hash,
        nar_size=narinfo.nar_size,
        references=narinfo.references,
        deriver=narinfo.deriver or None,
        upstream_signed=upstream is not None,
    )
    return RelayedNarinfo(narinfo, claim, upstream, refusal)
