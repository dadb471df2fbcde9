"""Accepting relayed narinfos: Guix's signature rule plus our layout and item checks."""

import pytest

from p2pcache.guix.narinfo import (
    NarURL,
    format_nar_hash,
    render_narinfo,
    render_signature_line,
    render_signed_part,
)
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.trust.narinfo_acceptance import NarinfoRejected, accept_relayed_narinfo

HASH = "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn"
PATH = f"/gnu/store/{HASH}-p2p-test-tree"


GROUPS = (NarURL("nar/x", "none", 10),)


def signed(key, body: bytes) -> bytes:
    line = render_signature_line(signature_field(body, key, "up"))
    return render_narinfo(body, line, GROUPS)


def tamper(data: bytes) -> bytes:
    return data.replace(b"NarSize: 1088", b"NarSize: 1089")


def body(path=PATH, size=1088) -> bytes:
    return render_signed_part(path, format_nar_hash(bytes(32)), size, [], None)


def test_accepts_a_narinfo_signed_by_an_acl_key_and_keeps_its_bytes():
    key = generate_key_pair()
    data = signed(key, body())
    accepted = accept_relayed_narinfo(data, HASH, [key.public])
    assert accepted.signed_part == body()
    assert data.startswith(accepted.signed_part + accepted.signature_line)
    assert accepted.signature_line.startswith(b"Signature: 1;up;")
    assert accepted.nar_size == 1088


def test_vector_narinfo_with_its_acl(vectors_dir):
    from p2pcache.guix.signing_key import parse_acl

    acl = parse_acl((vectors_dir / "test-acl").read_bytes())
    data = (vectors_dir / "tree.narinfo").read_bytes()
    assert accept_relayed_narinfo(data, HASH, acl).narinfo.store_path == PATH


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k, o: signed(o, body()), "unauthorized-key"),
        (lambda k, o: tamper(signed(k, body())), "hash-mismatch"),
        (lambda k, o: body() + b"URL: nar/x\nCompression: none\n", "unsigned"),
        (lambda k, o: signed(k, body(path=f"/gnu/store/{'0' * 32}-x")), "wrong-item"),
        (lambda k, o: signed(k, body(path=f"/nix/store/{HASH}-x")), "malformed"),
        (
            lambda k, o: signed(k, body()[:-1] + b"\nURL: nar/x\nCompression: none\n"),
            "old-layout",
        ),
        (
            lambda k, o: signed(
                k,
                b"StorePath: "
                + PATH.encode()
                + b"\nNarHash: sha256:"
                + b"0" * 52
                + b"\nReferences: \n",
            ),
            "unsigned-fields",
        ),
        (lambda k, o: b"1 bad line\n", "malformed"),
    ],
)
def test_refusals_carry_a_reason(make, reason):
    key, other = generate_key_pair(), generate_key_pair()
    with pytest.raises(NarinfoRejected) as info:
        accept_relayed_narinfo(make(key, other), HASH, [key.public])
    assert info.value.reason == reason


def test_a_refusal_survives_pickling_with_its_reason():
    """Refusals come back from the worker process that checks narinfos."""
    import pickle

    refusal = NarinfoRejected("hash-mismatch", "narinfo signature: hash-mismatch")
    copy = pickle.loads(pickle.dumps(refusal))
    assert (copy.reason, str(copy)) == ("hash-mismatch", "narinfo signature: hash-mismatch")
    assert copy == refusal and copy != NarinfoRejected("unsigned", str(refusal))
