"""Builders' quorum end to end over real nodes: `attest` on two builders, a node that trusts them.

Everything is the real thing: two builder nodes serve a store and attest what they built
(build logs as evidence) into their own Merkle logs; a node under the `quorum` policy, with
an empty Guix ACL (no upstream signature could carry an item), finds the items through the
DHT, gathers the builders' bundles over the peer API, asks a builder for a consistency proof
when its log has grown, and serves the item to a Guix client. It then carries the bundles, so
a third node accepts the item from it while both builders are offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from p2pcache.cli.attest import attest
from p2pcache.config import ListenAddress
from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.guix.narinfo_signature import SignatureStatus, verify_narinfo
from p2pcache.guix.signing_key import render_acl
from p2pcache.testing.build_logs import write_build_log
from p2pcache.trust.attestation_bundle import parse_bundle
from p2pcache.trust.trust_file import add_entry
from tests import guix_client
from tests.integration.conftest import node_config, running_node
from tests.integration.test_node_metrics import scrape


def addresses(n: int) -> dict:
    host = f"127.0.{60 + n}.1"
    return {
        "listen": ListenAddress(host, 0),
        "peer_listen": ListenAddress(host, 0),
        "dht_listen": ListenAddress(host, 0),
    }


def hash_part(info) -> str:
    return info.path.rsplit("/", 1)[-1][:32]


async def signed_at(node, h: str) -> None:
    """The node signs a baked item's narinfo in the background; it offers it once signed."""
    for _ in range(400):
        item = node.index.get(h)
        if item is not None and item.signature is not None:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{h} was never signed at {node.network.peer_url}")


async def fetch(node, info) -> bytes:
    """A Guix client at `node`: the narinfo (must be 200, signed by the node), then the NAR."""
    host = node.config.listen.host
    (reply,) = await guix_client.narinfos(host, node.guix_port, [hash_part(info)])
    assert reply.status == 200, reply.body
    assert verify_narinfo(reply.body, [node.key.public]) is SignatureStatus.VALID
    narinfo = parse_narinfo(reply.body)
    url = next(u.url for u in narinfo.urls if u.compression == "none")
    nar = await guix_client.get(host, node.guix_port, f"/{url}")
    assert nar.status == 200
    return nar.body


def decisions(node) -> dict:
    metrics = scrape(node.admin_port)
    return {
        dict(labels)["reason"]: value
        for labels, value in metrics.get("p2pcache_trust_decisions_total", {}).items()
        if dict(labels)["outcome"] == "accepted"
    }


async def test_a_quorum_of_two_real_builders_carries_an_item_with_no_upstream_signature(
    tmp_path, small_test_store
):
    store = small_test_store
    by_deriver = {i.deriver: i for i in store.items if i.deriver}
    built = list(by_deriver.values())[:2]
    assert len(built) == 2
    logs = tmp_path / "build-logs"
    for info in built:
        write_build_log(logs, info.deriver)
    empty_acl = tmp_path / "acl"
    empty_acl.write_bytes(render_acl([]))
    async with contextlib.AsyncExitStack() as stack:
        builders = []
        for n, name in enumerate(("alpha", "beta")):
            config = node_config(
                tmp_path / name, store, build_log_dir=logs, guix_acl=empty_acl, **addresses(n)
            )
            node = await stack.enter_async_context(running_node(config))
            builders.append((config, node))
        first = built[0]
        for config, _node in builders:
            assert await attest(config, [first.path], everything=False, force=False) == 0
        trust_file = tmp_path / "trusted-keys"
        for (_config, node), name in zip(builders, ("alpha", "beta"), strict=True):
            add_entry(trust_file, "builder", name, node.network.identity.public_key)
        bootstrap = (ListenAddress(*builders[0][1].network.dht.address),)

        def verifier_config(name: str, n: int, boot):
            return node_config(
                tmp_path / name,
                None,
                guix_acl=empty_acl,
                bootstrap=boot,
                trust_mode="quorum",
                trust_file=trust_file,
                miss_timeout=30.0,  # generous: a loaded 2-core machine must not turn it into 404
                attestation_timeout=20.0,
                **addresses(n),
            )

        verifier = await stack.enter_async_context(
            running_node(verifier_config("verifier", 2, bootstrap))
        )

        async def offered(info) -> None:
            """Both builders offer the item, and the verifier's miss path knows they do (this
            test judges the trust policy, not a DHT lookup on a loaded machine)."""
            for _config, node in builders:
                assert node.index.get(hash_part(info)).is_baked  # `attest` bakes what it attests
                verifier.network.directory.add(hash_part(info), node.network.peer_url)

        # 1. Both builders attest the first item: a quorum of two, no Guix signature needed.
        await offered(first)
        nar = await fetch(verifier, first)
        assert hashlib.sha256(nar).digest() == first.nar_sha256
        cached = verifier.index.get(hash_part(first))
        assert cached is not None and cached.is_baked
        assert (await asyncio.to_thread(decisions, verifier)).get("quorum", 0) >= 1
        carried = verifier.network.builder_log.bundles.carried(hash_part(first))
        builder_keys = {node.network.identity.public_key for _c, node in builders}
        assert {parse_bundle(b).attestation.attestation.builder for b in carried} == builder_keys

        # 2. The builders' logs grow: the second item's bundles sit under newer checkpoints,
        # which the verifier takes only with a consistency proof fetched from each builder.
        second = built[1]
        for config, _node in builders:
            assert await attest(config, [second.path], everything=False, force=False) == 0
        await offered(second)
        await fetch(verifier, second)
        observed = (await asyncio.to_thread(scrape, verifier.admin_port))[
            "p2pcache_trust_checkpoints_observed_total"
        ]
        outcomes = {dict(labels)["outcome"]: value for labels, value in observed.items()}
        assert outcomes.get("advanced", 0) >= 2, outcomes  # each with its proof
        for _config, node in builders:
            assert verifier.network.evidence.builder_url(node.network.identity.public_key) == (
                node.network.peer_url
            )

        # 3. Both builders go offline. A newcomer gets the first item from the verifier, which
        # carries the builders' bundles with it: still a quorum, still no Guix signature.
        for _config, node in builders:
            await node.stop()
        newcomer = await stack.enter_async_context(
            running_node(
                verifier_config("newcomer", 3, (ListenAddress(*verifier.network.dht.address),))
            )
        )
        await signed_at(verifier, hash_part(first))
        newcomer.network.directory.add(hash_part(first), verifier.network.peer_url)
        assert await fetch(newcomer, first) == nar
        assert (await asyncio.to_thread(decisions, newcomer)).get("quorum", 0) >= 1
