"""ItemTrust: gathering bundles through the seam, bounded; decisions reported."""

from __future__ import annotations

import asyncio

from p2pcache.errors import P2PCacheError
from p2pcache.trust.attestation_verifier import AttestationVerifier
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.item_trust import ItemTrust, TrustHooks, no_attestations
from p2pcache.trust.policy import Mode, TrustPolicy
from tests.trust.builders import Builder, claim


async def test_gather_is_bounded_in_time_and_a_failing_source_is_no_evidence(tmp_path):
    with CheckpointStore(tmp_path / "c.sqlite") as store:

        async def slow(hash_part: str) -> list[bytes]:
            await asyncio.sleep(30)
            return [b"never"]

        async def failing(hash_part: str) -> list[bytes]:
            raise P2PCacheError("the provider went away")

        trust = ItemTrust(TrustPolicy, AttestationVerifier(store), slow, timeout=0.2)
        started = asyncio.get_running_loop().time()
        assert await trust.gather("a" * 32) == []
        assert asyncio.get_running_loop().time() - started < 2
        trust.attestations_for = failing
        assert await trust.gather("a" * 32) == []
        assert await no_attestations("a" * 32) == []


async def test_judge_reports_every_decision_and_reads_the_policy_each_time(tmp_path):
    alpha, beta = Builder(tmp_path, "alpha"), Builder(tmp_path, "beta")
    decisions = []
    policy = TrustPolicy(mode=Mode.QUORUM, builders=(alpha.trusted,))
    with CheckpointStore(tmp_path / "c.sqlite") as store:
        trust = ItemTrust(
            lambda: policy, AttestationVerifier(store), hooks=TrustHooks(decisions.append)
        )
        bundles = [alpha.bundle(), beta.bundle()]
        assert not (await trust.judge(claim(), bundles)).accepted
        policy = TrustPolicy(mode=Mode.QUORUM, builders=(alpha.trusted, beta.trusted))
        assert (await trust.judge(claim(), bundles)).accepted
    assert [d.outcome for d in decisions] == ["refused", "accepted"]
