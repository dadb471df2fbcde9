"""The trust policy: its modes, and one named test per attack on it.

Bundles come from real builders (tests/trust/builders.py: real keys, real Merkle logs, real
checkpoints); the checkpoint store is a real SQLite file; the decision goes through ItemTrust
with the metric counters the node uses, and each attack is checked in the Prometheus output.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

import nacl.signing
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from p2pcache.net.network_metrics import NetworkCollector, NetworkCounters
from p2pcache.trust.attestation_bundle import MAX_BUNDLE_SIZE, AttestationBundle, render_bundle
from p2pcache.trust.attestation_verifier import (
    AttestationVerifier,
    VerifierHooks,
    no_consistency_proofs,
)
from p2pcache.trust.checkpoint import cosign_checkpoint, verify_checkpoint
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.item_trust import ItemTrust, TrustHooks
from p2pcache.trust.policy import (
    Mode,
    Statement,
    TrustedKey,
    TrustPolicy,
    decide,
)
from tests.trust.builders import (
    EVIL_HASH,
    OTHER_ITEM,
    Builder,
    claim,
    proofs_from,
)


@pytest.fixture
def builders(tmp_path):
    made = [Builder(tmp_path / "builders", name) for name in ("alpha", "beta", "gamma")]
    yield made
    for b in made:
        b.close()


@pytest.fixture
def checkpoints(tmp_path):
    with CheckpointStore(tmp_path / "checkpoints.sqlite") as store:
        yield store


class Harness:
    """ItemTrust wired to real counters, as network.py wires it."""

    def __init__(self, checkpoints, policy, proofs=no_consistency_proofs) -> None:
        self.counters = NetworkCounters()
        trust = self.counters.trust
        self.policy = policy
        verifier = AttestationVerifier(
            checkpoints,
            proofs,
            hooks=VerifierHooks(trust.count_checkpoint, trust.count_refusal, trust.count_fork),
        )
        self.trust = ItemTrust(
            lambda: self.policy,
            verifier,
            hooks=TrustHooks(trust.count_decision, trust.count_conflict),
        )

    async def judge(self, bundles, item_claim=None):
        return await self.trust.judge(item_claim or claim(), bundles)

    def metrics(self) -> str:
        registry = CollectorRegistry()
        registry.register(NetworkCollector(self.counters, lambda: None, lambda: (0, 0)))
        return generate_latest(registry).decode()


def policy_of(builders, **changes) -> TrustPolicy:
    return TrustPolicy(builders=tuple(b.trusted for b in builders), **changes)


def assert_refused(decision, reason: str, harness: Harness) -> None:
    assert not decision.accepted
    assert reason in decision.reasons or reason in {r.reason for r in decision.refusals}
    line = f'p2pcache_trust_decisions_total{{outcome="refused",reason="{decision.reason}"}} '
    counted = [x for x in harness.metrics().splitlines() if x.startswith(line)]
    assert counted and float(counted[0].split()[-1]) >= 1


# -- the modes ------------------------------------------------------------------------------


async def test_quorum_of_two_trusted_builders_accepts(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    decision = await h.judge([builders[0].bundle(), builders[1].bundle()])
    assert decision.accepted and decision.basis == "quorum"
    assert {b.name for b in decision.agreeing} == {"alpha", "beta"}
    assert decision.chunk_root == builders[0].attestation().attestation.chunk_root
    assert 'p2pcache_trust_decisions_total{outcome="accepted",reason="quorum"} 1.0' in h.metrics()
    assert 'p2pcache_trust_checkpoints_observed_total{outcome="first-seen"} 2.0' in h.metrics()


async def test_either_mode_without_builders_is_the_upstream_rule(checkpoints):
    policy = TrustPolicy()
    assert not policy.needs_attestations
    assert decide(policy, claim(upstream_signed=True)).accepted
    refused = decide(policy, claim(upstream_signed=False))
    assert not refused.accepted and refused.reason == "quorum-not-met"


async def test_upstream_mode_ignores_attestations(builders, checkpoints):
    policy = policy_of(builders, mode=Mode.UPSTREAM)
    assert not policy.needs_attestations
    h = Harness(checkpoints, policy)
    good = [builders[0].bundle(), builders[1].bundle()]
    assert not (await h.judge(good)).accepted
    assert (await h.judge(good, claim(upstream_signed=True))).reason == "upstream-signature"


async def test_either_mode_accepts_upstream_signature_or_quorum(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders))
    assert (await h.judge([], claim(upstream_signed=True))).basis == "upstream"
    bundles = [builders[0].bundle(), builders[1].bundle()]
    assert (await h.judge(bundles)).basis == "quorum"


async def test_both_mode_needs_upstream_signature_and_quorum(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.BOTH))
    bundles = [builders[0].bundle(), builders[1].bundle()]
    assert (await h.judge(bundles)).reason == "no-upstream-signature"
    assert (await h.judge(bundles[:1], claim(upstream_signed=True))).reason == "quorum-not-met"
    accepted = await h.judge(bundles, claim(upstream_signed=True))
    assert accepted.accepted and accepted.basis == "both"


async def test_log_proofs_off_still_checks_signatures_and_quorum(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, require_log_proofs=False))
    bare = [b.attestation().render() for b in builders[:2]]
    assert (await h.judge(bare)).accepted
    assert (await h.judge(bare[:1])).reason == "quorum-not-met"
    forged = bytearray(bare[1])
    forged[forged.index(b"4242")] = ord("5")  # NarSize edited after signing
    decision = await h.judge([bare[0], bytes(forged)])
    assert_refused(decision, "bad-signature", h)


async def test_bare_attestation_needs_log_proofs_when_required(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    decision = await h.judge([builders[0].attestation().render()])
    assert_refused(decision, "no-log-proof", h)


def test_policy_refuses_impossible_settings():
    with pytest.raises(ValueError):
        TrustPolicy(quorum=0)
    assert TrustPolicy(witnesses_required=1).problems()
    assert TrustPolicy(mode=Mode.QUORUM).problems()
    assert not TrustPolicy().problems()


# -- one test per attack ----------------------------------------------------------------------


async def test_attack_forged_attestation_signature(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    alpha = builders[0]
    signed = alpha.attestation()
    forged = replace(signed, signature=bytes(64 - 1) + b"\x01")
    forged_bundle = alpha.log_bundle(forged)
    decision = await h.judge([forged_bundle, builders[1].bundle()])
    assert_refused(decision, "bad-signature", h)
    assert decision.reason == "quorum-not-met"
    assert 'p2pcache_trust_evidence_refused_total{reason="bad-signature"} 1.0' in h.metrics()


async def test_attack_attestation_from_untrusted_key(builders, checkpoints, tmp_path):
    stranger = Builder(tmp_path / "stranger", "mallory")
    try:
        h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
        decision = await h.judge([stranger.bundle(), builders[0].bundle()])
        assert_refused(decision, "untrusted-key", h)
        assert [b.name for b in decision.agreeing] == ["alpha"]
        assert 'p2pcache_trust_evidence_refused_total{reason="untrusted-key"} 1.0' in h.metrics()
    finally:
        stranger.close()


async def test_attack_quorum_one_short(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=3))
    decision = await h.judge([builders[0].bundle(), builders[1].bundle()])
    assert_refused(decision, "quorum-not-met", h)
    assert len(decision.agreeing) == 2
    assert "2 of 3 trusted builders agree" in decision.explain()


async def test_attack_one_builder_counted_twice(builders, checkpoints):
    """Same key, two distinct attestations (different times), two bundles: one vote."""
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=2))
    alpha = builders[0]
    first = alpha.bundle(time=1_790_000_000)
    second = alpha.bundle(time=1_790_000_500)
    assert first != second
    decision = await h.judge([first, second, first])
    assert_refused(decision, "quorum-not-met", h)
    assert [b.name for b in decision.agreeing] == ["alpha"]
    # The same builder listed twice in the trust file under two names is still one key.
    doubled = TrustPolicy(
        mode=Mode.QUORUM, builders=(alpha.trusted, TrustedKey("alpha-again", alpha.public))
    )
    h.policy = doubled
    assert not (await h.judge([first, second])).accepted


async def test_attack_trusted_builder_disagreeing_is_a_conflict(builders, checkpoints, tmp_path):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    h.trust.conflict_record = tmp_path / "conflicts.jsonl"
    bundles = [builders[0].bundle(), builders[1].bundle(), builders[2].bundle(nar_hash=EVIL_HASH)]
    decision = await h.judge(bundles)
    assert_refused(decision, "conflict", h)
    assert decision.reason == "conflict"
    assert [c.builder.name for c in decision.conflicts] == ["gamma"]
    assert "p2pcache_trust_conflicts_total 1.0" in h.metrics()
    assert "gamma" in (tmp_path / "conflicts.jsonl").read_text()
    # An upstream signature does not outvote a trusted builder either (either mode).
    h.policy = policy_of(builders)
    upstream = await h.judge(bundles, claim(upstream_signed=True))
    assert not upstream.accepted and upstream.reason == "conflict"


async def test_attack_inclusion_proof_for_another_index(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    alpha = builders[0]
    alpha.filler(5)
    signed = alpha.attestation()
    index = alpha.log.append(signed.render())
    alpha.filler(2)
    # A proof of a neighbouring leaf, offered for this attestation's index, and vice versa.
    wrong_proof = tuple(alpha.log.inclusion_proof(index - 1))
    note = alpha.log.checkpoint(alpha.signing_key)
    moved = render_bundle(AttestationBundle(signed, index - 1, wrong_proof, note))
    swapped = render_bundle(AttestationBundle(signed, index, wrong_proof, note))
    for bundle in (moved, swapped):
        decision = await h.judge([bundle])
        assert_refused(decision, "inclusion-root-mismatch", h)
        h.counters.trust.decisions.clear()


async def test_attack_inclusion_proof_for_another_tree_size(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    alpha = builders[0]
    signed = alpha.attestation()
    alpha.filler(3)
    index = alpha.log.append(signed.render())
    alpha.filler(4)
    proof_at_old_size = tuple(alpha.log.inclusion_proof(index, index + 1))
    note = alpha.log.checkpoint(alpha.signing_key)  # the current, larger tree
    bundle = render_bundle(AttestationBundle(signed, index, proof_at_old_size, note))
    decision = await h.judge([bundle])
    assert not decision.accepted
    assert {"inclusion-proof-length", "inclusion-root-mismatch"} & {
        r.reason for r in decision.refusals
    }
    assert 'p2pcache_trust_evidence_refused_total{reason="inclusion-' in h.metrics()


async def test_attack_checkpoint_with_bad_signature(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    alpha = builders[0]
    bundle = alpha.bundle()
    head, sep, signature_line = bundle.rstrip(b"\n").rpartition(b"\n")
    name, _, sig = signature_line.rpartition(b" ")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 0x01
    tampered = head + sep + name + b" " + base64.b64encode(bytes(raw)) + b"\n"
    decision = await h.judge([tampered])
    assert_refused(decision, "checkpoint-bad-signature", h)
    refused = 'p2pcache_trust_evidence_refused_total{reason="checkpoint-bad-signature"} 1.0'
    assert refused in h.metrics()
    assert checkpoints.latest(alpha.origin) is None  # nothing recorded from a bad checkpoint


async def test_attack_checkpoint_missing_required_cosignatures(builders, checkpoints):
    witness = Cosigner("witness.example/w1", nacl.signing.SigningKey(b"w" * 32))
    policy = policy_of(
        builders,
        mode=Mode.QUORUM,
        quorum=1,
        witnesses=(TrustedKey(witness.name, witness.verifier.public_key),),
        witnesses_required=1,
    )
    h = Harness(checkpoints, policy)
    alpha = builders[0]
    plain = alpha.bundle()
    decision = await h.judge([plain])
    assert_refused(decision, "checkpoint-too-few-cosignatures", h)
    # The same bundle with the witness's cosignature counts.
    head, _, note = plain.partition(b"\nSignature: ")
    sig_line, _, note = note.partition(b"\n")
    verified = verify_checkpoint(note, alpha.public)
    cosigned = cosign_checkpoint(verified, witness, 1_790_000_000)
    assert (await h.judge([head + b"\nSignature: " + sig_line + b"\n" + cosigned])).accepted


async def test_attack_forked_log(builders, checkpoints, tmp_path):
    """Two signed checkpoints of one size with different roots: fork evidence, builder out."""
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    alpha = builders[0]
    honest = alpha.bundle()
    assert (await h.judge([honest])).accepted
    # The builder shows another tree of the same size to someone (a split view).
    split = Builder(tmp_path / "split", "alpha")  # same key, another log file
    try:
        evil = split.bundle(nar_hash=EVIL_HASH)
        decision = await h.judge([evil], claim(nar_hash=EVIL_HASH))
        assert_refused(decision, "fork-detected", h)
        assert "p2pcache_trust_forks_detected_total 1.0" in h.metrics()
        assert checkpoints.is_forked(alpha.origin)
        assert checkpoints.fork_evidence(alpha.origin)[0].kind == "same-size"
        # From now on nothing the builder signs counts, even its honest bundle.
        later = await h.judge([honest])
        assert not later.accepted
        assert "builder-forked" in {r.reason for r in later.refusals}
    finally:
        split.close()


async def test_attack_forked_log_caught_by_failing_consistency_proof(
    builders, checkpoints, tmp_path
):
    alpha = builders[0]
    split = Builder(tmp_path / "split", "alpha")
    try:
        h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
        h.trust.verifier.consistency_proof = proofs_from([split])  # the builder serves it
        assert (await h.judge([alpha.bundle()])).accepted
        split.filler(3)
        decision = await h.judge([split.bundle()])
        assert_refused(decision, "fork-detected", h)
        assert checkpoints.fork_evidence(alpha.origin)[0].kind == "inconsistent"
    finally:
        split.close()


async def test_relayed_failing_consistency_proof_is_not_evidence(builders, checkpoints, tmp_path):
    alpha = builders[0]
    split = Builder(tmp_path / "split", "alpha")
    try:
        h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
        h.trust.verifier.consistency_proof = proofs_from([split], from_builder=False)
        assert (await h.judge([alpha.bundle()])).accepted
        split.filler(3)
        decision = await h.judge([split.bundle()])
        assert "awaiting-consistency-proof" in {r.reason for r in decision.refusals}
        assert not checkpoints.is_forked(alpha.origin)
    finally:
        split.close()


async def test_newer_checkpoint_waits_for_a_consistency_proof(builders, checkpoints):
    alpha = builders[0]
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    assert (await h.judge([alpha.bundle(OTHER_ITEM)], claim(store_path=OTHER_ITEM))).accepted
    alpha.filler(2)
    bundle = alpha.bundle()
    waiting = await h.judge([bundle])
    assert "awaiting-consistency-proof" in {r.reason for r in waiting.refusals}
    assert checkpoints.latest(alpha.origin).size == 1  # the old checkpoint stays
    h.trust.verifier.consistency_proof = proofs_from([alpha])
    assert (await h.judge([bundle])).accepted
    assert checkpoints.latest(alpha.origin).size == 4


async def test_attack_rollback_to_an_older_checkpoint(builders, checkpoints):
    alpha = builders[0]
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    h.trust.verifier.consistency_proof = proofs_from([alpha])
    signed = alpha.attestation()
    index = alpha.log.append(signed.render())
    old_note = alpha.log.checkpoint(alpha.signing_key)
    alpha.filler(5)
    assert (await h.judge([alpha.bundle_of(signed, index)])).accepted  # newest: size 6
    old = render_bundle(AttestationBundle(signed, index, (), old_note))
    # Without a proof that it is a prefix, the older checkpoint is refused...
    h.trust.verifier.consistency_proof = no_consistency_proofs
    decision = await h.judge([old])
    assert_refused(decision, "rollback", h)
    assert checkpoints.latest(alpha.origin).size == 6
    # ...and with one it is confirmed, while the newest stays the newest.
    h.trust.verifier.consistency_proof = proofs_from([alpha])
    assert (await h.judge([old])).accepted
    assert checkpoints.latest(alpha.origin).size == 6


async def test_attack_attestation_for_another_store_path_replayed(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    replayed = [b.bundle(OTHER_ITEM) for b in builders[:2]]
    decision = await h.judge(replayed)
    assert_refused(decision, "wrong-store-path", h)
    assert 'p2pcache_trust_evidence_refused_total{reason="wrong-store-path"} 2.0' in h.metrics()
    # The pure policy also refuses statements for another path handed to it directly.
    statement = Statement(
        builders[0].trusted, builders[0].attestation(OTHER_ITEM).attestation, True
    )
    assert not decide(policy_of(builders, quorum=1), claim(), [statement]).accepted


async def test_attack_references_differ_from_the_attested_ones(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    bundles = [builders[0].bundle(), builders[1].bundle()]
    lying = claim(references=(f"{'e' * 32}-trojan-1.0",))
    decision = await h.judge(bundles, lying)
    assert_refused(decision, "references-mismatch", h)


async def test_attack_nar_size_differs_from_the_attested_one(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    bundles = [builders[0].bundle(), builders[1].bundle()]
    decision = await h.judge(bundles, claim(nar_size=999_999))
    assert_refused(decision, "nar-size-mismatch", h)


async def test_attack_deriver_differs_from_the_attested_one(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    bundles = [builders[0].bundle(), builders[1].bundle()]
    decision = await h.judge(bundles, claim(deriver=f"{'9' * 32}-other.drv"))
    assert_refused(decision, "deriver-mismatch", h)
    assert decision.reason == "quorum-not-met"


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("oversized", lambda b: b.bundle() + b"x" * MAX_BUNDLE_SIZE, "oversized"),
        ("empty", lambda b: b"", "structure"),
        ("truncated", lambda b: b.bundle()[:200], "structure"),
        ("not a bundle", lambda b: b"GET / HTTP/1.1\r\n" * 20, "version"),
        ("bad index", lambda b: b.bundle().replace(b"Index: 0", b"Index: -1", 1), "index"),
        ("bad proof", lambda b: b.bundle().replace(b"Proof:", b"Proof: !!", 1), "proof"),
        (
            "binary",
            lambda b: b"p2pcache-bundle/v1\n" + hashlib.sha256(b"x").digest() * 40,
            "structure",
        ),
    ],
)
async def test_attack_oversized_or_malformed_bundle(builders, checkpoints, name, make, reason):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    decision = await h.judge([make(builders[0])])
    assert_refused(decision, reason, h)
    assert f'p2pcache_trust_evidence_refused_total{{reason="{reason}"}} 1.0' in h.metrics()


async def test_attack_flood_of_bundles_is_bounded(builders, checkpoints):
    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM, quorum=1))
    flood = [b"junk %d" % i for i in range(500)]
    decision = await h.judge(flood)
    assert "too-many-bundles" in {r.reason for r in decision.refusals}
    assert len(decision.refusals) == 1 + h.trust.verifier.max_bundles


async def test_forced_attestations_count_only_when_the_operator_accepts_them(builders, checkpoints):
    from p2pcache.trust.attestation import Evidence

    h = Harness(checkpoints, policy_of(builders, mode=Mode.QUORUM))
    bundles = [b.bundle(evidence=Evidence.FORCED) for b in builders[:2]]
    decision = await h.judge(bundles)
    assert_refused(decision, "forced-evidence", h)
    h.policy = policy_of(builders, mode=Mode.QUORUM, accept_forced=True)
    assert (await h.judge(bundles)).accepted
    # A forced statement that contradicts the narinfo is still a conflict.
    h.policy = policy_of(builders, mode=Mode.QUORUM)
    evil = builders[2].bundle(evidence=Evidence.FORCED, nar_hash=EVIL_HASH)
    assert (await h.judge([*bundles, evil])).reason == "conflict"
