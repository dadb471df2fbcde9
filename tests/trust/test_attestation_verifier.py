"""AttestationVerifier: bundles into statements or refusals, checkpoints through the store."""

from __future__ import annotations

import pytest

from p2pcache.trust.attestation_bundle import AttestationBundle, render_bundle
from p2pcache.trust.attestation_verifier import AttestationVerifier, VerifierHooks
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.policy import Mode, TrustPolicy
from tests.trust.builders import ITEM, Builder, proofs_from


@pytest.fixture
def alpha(tmp_path):
    builder = Builder(tmp_path / "b", "alpha")
    yield builder
    builder.close()


@pytest.fixture
def store(tmp_path):
    with CheckpointStore(tmp_path / "seen.sqlite") as s:
        yield s


def policy(*builders, **changes) -> TrustPolicy:
    return TrustPolicy(mode=Mode.QUORUM, builders=tuple(b.trusted for b in builders), **changes)


async def test_the_same_bundle_offered_twice_is_judged_once(alpha, store):
    seen = []
    verifier = AttestationVerifier(store, hooks=VerifierHooks(checkpoint=seen.append))
    bundle = alpha.bundle()
    evidence = await verifier.verify(policy(alpha), ITEM, [bundle, bundle, bundle])
    assert len(evidence.statements) == 1 and evidence.statements[0].logged
    assert seen == ["first-seen"]


async def test_without_log_proofs_a_bundle_counts_on_its_signature_alone(alpha, store):
    signed = alpha.attestation()
    index = alpha.log.append(signed.render())
    note = alpha.log.checkpoint(alpha.signing_key)
    broken_proof = render_bundle(AttestationBundle(signed, index, (b"\0" * 32,), note))
    verifier = AttestationVerifier(store)
    strict = await verifier.verify(policy(alpha), ITEM, [broken_proof])
    assert [r.reason for r in strict.refusals] == ["inclusion-proof-length"]
    relaxed = await verifier.verify(policy(alpha, require_log_proofs=False), ITEM, [broken_proof])
    assert len(relaxed.statements) == 1 and not relaxed.statements[0].logged
    assert store.latest(alpha.origin) is None  # nothing about the log was believed


async def test_a_proof_source_that_fails_is_a_missing_proof(alpha, store):
    from p2pcache.errors import P2PCacheError

    async def unreachable(key, old, new):
        raise P2PCacheError("the builder is offline")

    verifier = AttestationVerifier(store, unreachable)
    assert (await verifier.verify(policy(alpha), ITEM, [alpha.bundle()])).statements
    alpha.filler(2)
    later = await verifier.verify(policy(alpha), ITEM, [alpha.bundle()])
    assert [r.reason for r in later.refusals] == ["awaiting-consistency-proof"]
    verifier.consistency_proof = proofs_from([alpha])
    assert (await verifier.verify(policy(alpha), ITEM, [alpha.bundle()])).statements


async def test_hostile_input_of_any_type_never_raises(alpha, store):
    verifier = AttestationVerifier(store)
    junk = [b"", b"\0" * 10, "not bytes", b"p2pcache-attestation/v1\n" + b"x" * 100]
    evidence = await verifier.verify(policy(alpha), ITEM, junk)
    assert not evidence.statements and len(evidence.refusals) == len(junk)
