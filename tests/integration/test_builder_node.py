"""A builder node: `attest` run beside it, and other nodes fetch and verify what it serves."""

from __future__ import annotations

import asyncio

import aiohttp

from p2pcache.cli.attest import attest
from p2pcache.config import ListenAddress
from p2pcache.net.peer_client import PeerClient
from p2pcache.testing.build_logs import write_build_log
from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.checkpoint import verify_checkpoint
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_proof import verify_consistency, verify_inclusion
from tests.integration.conftest import node_config, running_node
from tests.integration.test_node_metrics import scrape


async def test_a_running_node_serves_what_attest_logged_beside_it(tmp_path, small_test_store):
    built = [i for i in small_test_store.items if i.deriver][:3]
    logs = tmp_path / "logs"
    for info in built:
        write_build_log(logs, info.deriver)
    host = "127.0.40.1"
    config = node_config(
        tmp_path / "builder",
        small_test_store,
        build_log_dir=logs,
        listen=ListenAddress(host, 0),
        peer_listen=ListenAddress(host, 0),
        dht_listen=None,
    )
    async with running_node(config) as node, aiohttp.ClientSession() as session:
        client = PeerClient(session)
        url = node.network.peer_url
        public_key = node.network.identity.public_key
        assert await client.fetch_checkpoint(url) is None  # nothing attested yet
        # `p2pcache attest` is another process in real life; it opens the same files.
        assert await attest(config, [built[0].path], everything=False, force=False) == 0
        first = verify_checkpoint(await client.fetch_checkpoint(url), public_key)
        assert first.size == 1
        assert await attest(config, [], everything=True, force=False) == 0
        newest = verify_checkpoint(await client.fetch_checkpoint(url), public_key)
        items_built = {
            i.path for i in small_test_store.items if i.deriver in {b.deriver for b in built}
        }
        assert newest.size == len(items_built)
        consistency = await client.fetch_consistency_proof(url, first.size, newest.size)
        verify_consistency(first.size, newest.size, consistency, first.root, newest.root)
        for info in small_test_store.items:
            bundles = await client.fetch_attestations(url, info.path.rsplit("/", 1)[-1][:32])
            if info.path not in items_built:
                assert bundles == []  # substituted: never attested
                continue
            (bundle,) = (parse_bundle(b) for b in bundles)
            verified = verify_bundle(bundle, public_key, info.path)
            assert verified.attestation.nar_hash == info.nar_sha256
            assert verified.checkpoint.size == newest.size
            proof = await client.fetch_inclusion_proof(url, verified.index, newest.size)
            verify_inclusion(verified.index, newest.size, bundle.leaf_hash, proof, newest.root)
            assert bundle.leaf_hash == leaf_hash(bundle.attestation.render())
        metrics = await asyncio.to_thread(scrape, node.admin_port)
        assert metrics["p2pcache_attestations_served_total"][()] == len(items_built)
        assert metrics["p2pcache_checkpoints_served_total"][()] == 2
