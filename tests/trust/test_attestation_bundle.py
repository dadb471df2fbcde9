"""Attestation bundles: the protocol vectors, and bundles made from a real builder log."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest

from p2pcache.trust.attestation import Attestation, Evidence, render_attestation, sign_attestation
from p2pcache.trust.attestation_bundle import (
    AttestationBundle,
    BundleFormatError,
    parse_bundle,
    render_bundle,
    verify_bundle,
)
from p2pcache.trust.checkpoint import Checkpoint, builder_origin, sign_checkpoint
from p2pcache.trust.checkpoint_store import CheckpointStore, Outcome
from p2pcache.trust.cosignature import CosignatureVerifier
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_log import MerkleLog
from tests.trust.attestation_vectors import data_of, load, names

BUNDLES = load("bundles")
WITNESSES = [
    CosignatureVerifier(w["name"], bytes.fromhex(w["public_key"])) for w in BUNDLES["witnesses"]
]


@pytest.mark.parametrize("case", BUNDLES["valid"], ids=names(BUNDLES["valid"]))
def test_valid_bundle_vector(case):
    data = data_of(case)
    bundle = parse_bundle(data)
    assert render_bundle(bundle) == data
    verified = verify_bundle(
        bundle,
        bytes.fromhex(case["builder_key"]),
        case["store_path"],
        witnesses=WITNESSES,
        required_cosignatures=case["required_cosignatures"],
    )
    assert verified.index == case["index"]
    assert verified.checkpoint.size == case["size"]
    assert verified.attestation.store_path == case["store_path"]


@pytest.mark.parametrize("case", BUNDLES["invalid"], ids=names(BUNDLES["invalid"]))
def test_invalid_bundle_vector(case):
    data = data_of(case)
    if case["stage"] == "parse":
        with pytest.raises(BundleFormatError) as caught:
            parse_bundle(data)
    else:
        bundle = parse_bundle(data)
        with pytest.raises(Exception) as caught:  # the reason is checked below
            verify_bundle(
                bundle,
                bytes.fromhex(case["builder_key"]),
                case["store_path"],
                witnesses=WITNESSES,
                required_cosignatures=case["required_cosignatures"],
            )
    assert caught.value.reason == case["reason"]


def test_bundles_from_a_builder_log_verify_and_feed_the_checkpoint_store(tmp_path):
    key = nacl.signing.SigningKey(hashlib.sha256(b"bundle test builder").digest())
    public = bytes(key.verify_key)
    texts = []
    for i in range(11):
        a = Attestation(
            builder=public,
            store_path=f"/gnu/store/{'a' * 31}{i % 10}-item-{i}",
            nar_hash=hashlib.sha256(b"nar %d" % i).digest(),
            nar_size=100 + i,
            references=(),
            deriver=None,
            system="x86_64-linux",
            time=1_700_000_000 + i,
            chunk_root=leaf_hash(hashlib.sha256(b"nar %d" % i).digest()),
            evidence=Evidence.BUILD_LOG,
        )
        texts.append((a, sign_attestation(a, key)))
    with (
        MerkleLog(tmp_path / "log.sqlite", builder_origin(public)) as log,
        CheckpointStore(tmp_path / "seen.sqlite") as store,
    ):
        for a, signed in texts:
            index = log.append(render_attestation(signed))
            note = log.checkpoint(key)
            bundle = AttestationBundle(signed, index, tuple(log.inclusion_proof(index)), note)
            verified = verify_bundle(parse_bundle(render_bundle(bundle)), public, a.store_path)
            previous = store.latest(verified.checkpoint.origin)
            proof = None if previous is None else log.consistency_proof(previous.size, index + 1)
            outcome = store.observe(verified.checkpoint, proof).outcome
            assert outcome is (Outcome.FIRST_SEEN if index == 0 else Outcome.ADVANCED)
        # A bundle made long ago stays usable: its checkpoint is proven a prefix of the newest.
        old_note = sign_checkpoint(Checkpoint(builder_origin(public), 3, log.root(3)), key)
        old = AttestationBundle(texts[2][1], 2, tuple(log.inclusion_proof(2, 3)), old_note)
        verified = verify_bundle(parse_bundle(render_bundle(old)), public, texts[2][0].store_path)
        result = store.observe(verified.checkpoint, log.consistency_proof(3, log.size))
        assert result.outcome is Outcome.OLDER_CONSISTENT
        assert result.latest.size == 11
