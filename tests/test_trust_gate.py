"""TrustGate: the node's trust state, the live trust file, and the seams' defaults."""

from __future__ import annotations

import asyncio
import logging

from p2pcache.cache.index import CacheIndex
from p2pcache.config import Config
from p2pcache.net.network_metrics import TrustCounters
from p2pcache.trust.policy import Mode
from p2pcache.trust.trust_file import add_entry
from p2pcache.trust_gate import TrustGate


async def gate_in(tmp_path, **config) -> tuple[TrustGate, CacheIndex]:
    index = CacheIndex(tmp_path / "index.sqlite")
    await index.open()
    gate = TrustGate(Config(data_dir=tmp_path, **config), index, [], TrustCounters())
    gate.start()
    return gate, index


async def test_default_policy_needs_no_attestations_and_follows_the_trust_file(tmp_path):
    gate, index = await gate_in(tmp_path)
    try:
        assert gate.policy().mode is Mode.EITHER and not gate.policy().needs_attestations
        assert (tmp_path / "trust" / "checkpoints.sqlite").exists()
        add_entry(tmp_path / "trust" / "trusted-keys", "builder", "alpha", b"\x01" * 32)
        await asyncio.sleep(0)  # the file is looked at once per loop iteration
        policy = gate.policy()
        assert [b.name for b in policy.builders] == ["alpha"] and policy.needs_attestations
        assert gate.policy() is policy  # unchanged file: the same policy object
        # With the defaults the seams give nothing: no attestation, no proof.
        assert await gate.attestations_for("a" * 32) == []
        assert await gate.consistency_proof(b"\x01" * 32, 1, 2) is None
    finally:
        gate.close()
        await index.close()


async def test_impossible_settings_are_said_at_start(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    gate, index = await gate_in(tmp_path, trust_mode="quorum", trust_witnesses_required=1)
    try:
        assert "needs 2 trusted builders" in caplog.text
        assert "witness cosignatures are required" in caplog.text
    finally:
        gate.close()
        await index.close()
