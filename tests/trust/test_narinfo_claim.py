"""What a relayed narinfo claims, signed by an ACL key or not."""

from __future__ import annotations

import pytest

from p2pcache.guix.narinfo import format_nar_hash, render_signed_part
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.trust.narinfo_acceptance import NarinfoRejected
from p2pcache.trust.narinfo_claim import read_relayed_narinfo
from tests.trust.test_narinfo_acceptance import HASH, PATH, signed

REF = f"{HASH}-p2p-test-tree"
DRV = "0" * 32 + "-p2p-test-tree.drv"


def body(size: int = 1088) -> bytes:
    return render_signed_part(PATH, format_nar_hash(bytes(32)), size, [REF], DRV)


def test_an_acl_signed_narinfo_claims_its_fields_and_keeps_its_signed_part():
    key = generate_key_pair()
    relayed = read_relayed_narinfo(signed(key, body()), HASH, [key.public])
    assert relayed.upstream is not None and relayed.upstream.signed_part == body()
    claim = relayed.claim
    assert claim.upstream_signed
    assert (claim.store_path, claim.nar_hash, claim.nar_size) == (PATH, bytes(32), 1088)
    assert claim.references == (REF,) and claim.deriver == DRV


def test_a_foreign_signed_narinfo_still_claims_but_says_why_the_acl_refused():
    relayed = read_relayed_narinfo(signed(generate_key_pair(), body()), HASH, [])
    assert relayed.upstream is None and not relayed.claim.upstream_signed
    assert relayed.upstream_refusal.reason == "unauthorized-key"
    assert relayed.claim.nar_size == 1088


@pytest.mark.parametrize(
    "data, hash_part, reason",
    [
        (b"StorePath: /gnu/store/nonsense\n", HASH, "malformed"),
        (body(), "1" * 32, "wrong-item"),
        (body(size=0), HASH, "malformed"),
        (body().replace(b"References: " + REF.encode() + b"\n", b""), HASH, "malformed"),
        (b"\xff" * 100, HASH, "malformed"),
    ],
)
def test_narinfos_that_claim_nothing_usable_are_refused(data, hash_part, reason):
    with pytest.raises(NarinfoRejected) as caught:
        read_relayed_narinfo(data, hash_part, [])
    assert caught.value.reason == reason
