"""Builder, witness and verifier as three real nodes: cosigned only after a consistency check.

The witness watches the builder over the peer API, cosigns its checkpoints, and the builder
attaches the cosignature to what it serves (checkpoint route and bundles), so a verifier that
requires the witness's cosignature accepts them. A builder that rewrites its history gets no
cosignature, and the witness keeps the evidence.
"""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

from p2pcache.net.peer_client import PeerClient
from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.attestation_verifier import AttestationVerifier
from p2pcache.trust.checkpoint import CheckpointVerificationError, verify_checkpoint
from p2pcache.trust.policy import TrustedKey, TrustPolicy
from p2pcache.trust.witness import WatchedLog, witness_name, witness_verifier
from tests.integration.conftest import running_node
from tests.integration.log_watch_nodes import (
    attest_items,
    erase_log,
    free_port,
    make_builder_dir,
    peer_config,
)
from tests.integration.test_node_metrics import scrape
from tests.trust.builders import hash_part, store_path

BUILDER_HOST, WITNESS_HOST, VERIFIER_HOST = "127.0.61.1", "127.0.62.1", "127.0.63.1"


def witness_of(node):
    return node.network.log_watching.witness_service


def collector_of(node):
    return node.network.log_watching.collector


async def watch_setup(tmp_path):
    """Builder (3 attested items) and witness configurations that name each other."""
    builder_dir = tmp_path / "builder"
    key = make_builder_dir(builder_dir, b"b" * 32)
    attest_items(builder_dir, key, range(3), "hello-2.12")
    builder_url = f"http://{BUILDER_HOST}:{free_port(BUILDER_HOST)}"
    witness_url = f"http://{WITNESS_HOST}:{free_port(WITNESS_HOST)}"
    builder_config = peer_config(
        builder_dir,
        BUILDER_HOST,
        int(builder_url.rsplit(":", 1)[1]),
        builder_witnesses=(witness_url,),
    )
    witness_config = peer_config(
        tmp_path / "witness",
        WITNESS_HOST,
        int(witness_url.rsplit(":", 1)[1]),
        witness_enabled=True,
        witness_logs=(WatchedLog(bytes(key.verify_key), builder_url),),
    )
    return key, builder_config, witness_config, builder_url, witness_url


async def test_the_witness_cosigns_after_a_consistency_check_and_a_verifier_accepts(tmp_path):
    key, builder_config, witness_config, builder_url, witness_url = await watch_setup(tmp_path)
    public = bytes(key.verify_key)
    verifier_config = peer_config(
        tmp_path / "verifier", VERIFIER_HOST, gossip_peers=(builder_url,), gossip_builders=(public,)
    )
    async with (
        running_node(builder_config) as builder,
        running_node(witness_config) as witness,
        running_node(verifier_config) as verifier,
        aiohttp.ClientSession() as session,
    ):
        client = PeerClient(session)
        witness_key = witness.network.identity.public_key
        required = {"witnesses": [witness_verifier(witness_key)], "required_cosignatures": 1}
        # Before any cosignature, a verifier requiring one refuses the builder's checkpoint,
        # and the trust policy does not count its attestations.
        with pytest.raises(CheckpointVerificationError, match="cosignatures"):
            verify_checkpoint(await client.fetch_checkpoint(builder_url), public, **required)
        policy = TrustPolicy(
            quorum=1,
            witnesses_required=1,
            builders=(TrustedKey("builder", public),),
            witnesses=(TrustedKey(witness_name(witness_key), witness_key),),
        )
        attestations = AttestationVerifier(verifier.network.trust.checkpoints)
        offered = await client.fetch_attestations(builder_url, hash_part(store_path(1)))
        refused = await attestations.verify(policy, store_path(1), offered)
        assert not refused.statements
        assert [r.reason for r in refused.refusals] == ["checkpoint-too-few-cosignatures"]

        assert (await witness_of(witness).watch_once())[builder.network.builder_log.origin] in (
            "cosigned",
            "already-cosigned",
        )
        cosigned = await client.fetch_cosigned_checkpoint(witness_url, public)
        assert verify_checkpoint(cosigned, public, **required).size == 3
        assert set((await collector_of(builder).collect_once()).values()) <= {
            "attached",
            "unchanged",
        }
        served = verify_checkpoint(await client.fetch_checkpoint(builder_url), public, **required)
        assert served.size == 3 and served.cosignatures[0].public_key == witness_key
        (bundle,) = await client.fetch_attestations(builder_url, hash_part(store_path(1)))
        verify_bundle(parse_bundle(bundle), public, store_path(1), **required)
        counted = await attestations.verify(policy, store_path(1), [bundle])
        assert [s.builder.key for s in counted.statements] == [public]

        # The builder grows; the witness asks it for a proof from size 3 before cosigning 5.
        attest_items(builder_config.data_dir, key, range(3, 5), "hello-2.12")
        grown = verify_checkpoint(await client.fetch_checkpoint(builder_url), public)
        assert grown.size == 5 and not grown.cosignatures
        assert (await witness_of(witness).watch_once()) == {grown.origin: "cosigned"}
        assert await collector_of(builder).collect_once() == {witness_url: "attached"}
        served = verify_checkpoint(await client.fetch_checkpoint(builder_url), public, **required)
        assert served.size == 5

        # The verifier met size 3 in the bundles above; gossip from the builder itself now
        # brings size 5, proven consistent by the builder's own proof: the same store.
        outcomes = await verifier.network.log_watching.gossip_service.pull_from(builder_url)
        assert outcomes == ["advanced"]
        latest = verifier.network.trust.checkpoints.latest(grown.origin)
        assert verify_checkpoint(latest.note, public, **required).size == 5

        metrics = await asyncio.to_thread(scrape, witness.admin_port)
        assert metrics["p2pcache_witness_cosignatures_total"][()] == 2
        assert metrics["p2pcache_trust_forks_detected_total"][()] == 0
        builder_metrics = await asyncio.to_thread(scrape, builder.admin_port)
        collected = builder_metrics["p2pcache_builder_cosignatures_collected_total"]
        assert collected[(("result", "attached"),)] >= 2


@pytest.mark.parametrize("rewritten_size", [3, 5], ids=["same-size", "grown"])
async def test_a_builder_that_rewrites_its_history_gets_no_cosignature(tmp_path, rewritten_size):
    key, builder_config, witness_config, builder_url, witness_url = await watch_setup(tmp_path)
    public = bytes(key.verify_key)
    async with running_node(witness_config) as witness, aiohttp.ClientSession() as session:
        client = PeerClient(session)
        required = {
            "witnesses": [witness_verifier(witness.network.identity.public_key)],
            "required_cosignatures": 1,
        }
        async with running_node(builder_config) as builder:
            origin = builder.network.builder_log.origin
            assert (await witness_of(witness).watch_once()) == {origin: "cosigned"}
        # Same key, a new log with other leaves, served at the same address.
        erase_log(builder_config.data_dir)
        attest_items(builder_config.data_dir, key, range(rewritten_size), "rewritten-1.0")
        async with running_node(builder_config) as builder:
            assert (await witness_of(witness).watch_once()) == {origin: "fork-detected"}
            assert (await witness_of(witness).watch_once()) == {origin: "log-forked"}
            # The witness still serves only the checkpoint it cosigned before the rewrite.
            cosigned = await client.fetch_cosigned_checkpoint(witness_url, public)
            original = verify_checkpoint(cosigned, public, **required)
            served = await client.fetch_checkpoint(builder_url)
            assert verify_checkpoint(served, public).root != original.root
            # The builder cannot attach it to its rewritten checkpoint; verifiers refuse that.
            assert await collector_of(builder).collect_once() == {witness_url: "refused"}
            with pytest.raises(CheckpointVerificationError, match="cosignatures"):
                verify_checkpoint(await client.fetch_checkpoint(builder_url), public, **required)
        (evidence,) = witness.network.log_watching.witness.history.fork_evidence(origin)
        assert evidence.kind == ("same-size" if rewritten_size == 3 else "inconsistent")
        metrics = await asyncio.to_thread(scrape, witness.admin_port)
        assert metrics["p2pcache_trust_forks_detected_total"][()] == 1
        assert metrics["p2pcache_witness_checkpoints_total"][(("outcome", "fork-detected"),)] == 1


async def test_on_their_own_schedule_the_builder_ends_up_serving_the_cosigned_checkpoint(tmp_path):
    key, builder_config, witness_config, builder_url, _ = await watch_setup(tmp_path)
    public = bytes(key.verify_key)
    fast = {"witness_interval": 0.2, "cosignature_interval": 0.2}
    async with (
        running_node(dataclasses.replace(builder_config, **fast)),
        running_node(dataclasses.replace(witness_config, **fast)) as witness,
        aiohttp.ClientSession() as session,
    ):
        client = PeerClient(session)
        witnesses = [witness_verifier(witness.network.identity.public_key)]
        async with asyncio.timeout(20):
            while True:
                note = await client.fetch_checkpoint(builder_url)
                if verify_checkpoint(note, public, witnesses=witnesses).cosignatures:
                    break
                await asyncio.sleep(0.1)
