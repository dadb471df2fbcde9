"""A lying peer, seen where an operator looks: the verification-failure family, and the recent
failures and transfers of the status API.

The node's only provider for an item is a peer that serves the right narinfo (signed by a key
the node trusts) but flips a byte in every chunk it sends. Every chunk fails its check, the
fetch fails, the stream to Guix is cut, and all of it is counted and listed.
"""

from __future__ import annotations

import asyncio

from tests import guix_client
from tests.integration.test_metrics_scrape import scrape, value
from tests.integration.test_peer_network import baked, network
from tests.net.peer_servers import CorruptingPeerAPI, peer_server


async def test_chunks_failing_their_check_are_counted_and_listed(tmp_path, test_store):
    async with network(tmp_path, test_store, 2) as (seed, node):
        info = (await baked(seed, 1))[0]
        base = info.path.rsplit("/", 1)[-1]
        # The seed signs a baked item in the background; the liar signs it on demand instead.
        async with peer_server(
            seed, api_class=CorruptingPeerAPI, sign_item=seed._sign_item
        ) as liar:
            node.network.directory.add(base[:32], liar)
            host = node.config.listen.host
            reply = (await guix_client.narinfos(host, node.guix_port, [base[:32]]))[0]
            assert reply.status == 200
            nar = await guix_client.get(host, node.guix_port, f"/nar/{base}")
            assert nar.status == 502  # the first chunk failed its check: no NAR byte went out
            samples = await asyncio.to_thread(scrape, node.admin_port)
            status = await node.status()

    assert value(samples, "p2pcache_verification_failures_total", check="chunk") >= 1
    assert value(samples, "p2pcache_chunk_failures_total", reason="bad-chunk") >= 1
    assert value(samples, "p2pcache_transfers_total", outcome="failed") == 1
    transfer = status["transfers"]["recent"][0]
    assert (transfer["item"], transfer["outcome"]) == (base, "failed")
    assert transfer["detail"]
    checks = {f["check"] for f in status["verification_failures"]["recent"]}
    assert checks == {"chunk"}
    assert status["verification_failures"]["counts"]["chunk"] == value(
        samples, "p2pcache_verification_failures_total", check="chunk"
    )
