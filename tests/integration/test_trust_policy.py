"""The trust policy over real nodes: builders' quorum end to end, and attacks through the miss path.

A seeding node holds real store items; a second node, joined through the DHT, serves them to
a Guix client. Builders are real (tests/trust/builders.py: keys, Merkle logs, checkpoints),
and their bundles are served by a real aiohttp server on loopback, at the path the peer API
reserves for them (`/p2p/v1/attestations/<hash>`), from which the node's `attestations_for`
seam fetches them over HTTP. (The builder side's own route and client replace this server
once merged; the seam is the same.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from p2pcache.config import ListenAddress
from p2pcache.guix.narinfo_signature import SignatureStatus, verify_narinfo
from p2pcache.guix.signing_key import render_acl
from p2pcache.server.admin_app import AiohttpListener
from p2pcache.trust.attestation import Evidence
from p2pcache.trust.trust_file import add_entry
from tests import guix_client
from tests.cli.run import p2pcache
from tests.integration.conftest import node_config, running_node
from tests.integration.test_peer_network import addresses, baked, wait_until_findable
from tests.trust.builders import Builder

ROOT = Path(__file__).resolve().parents[2]


class AttestationServer:
    """Serves, per hash part, whatever bundles the test put there (honest or hostile)."""

    def __init__(self) -> None:
        self.bundles: dict[str, list[bytes]] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        found = self.bundles.get(request.match_info["hash"], [])
        body = json.dumps([base64.b64encode(b).decode() for b in found])
        return web.Response(text=body, content_type="application/json")

    def source(self, session: aiohttp.ClientSession):
        """The node's `attestations_for` seam, reading this server over HTTP (bounded)."""

        async def attestations_for(hash_part: str) -> list[bytes]:
            async with session.get(f"{self.url}/p2p/v1/attestations/{hash_part}") as response:
                data = await response.content.read(8 << 20)
            return [base64.b64decode(b) for b in json.loads(data)]

        return attestations_for


@contextlib.asynccontextmanager
async def setup(tmp_path, store, *, mode: str = "quorum", acl_trusts_seed: bool = False):
    """A seed holding `store`, a node `b` under the given policy, builders alpha and beta."""
    async with contextlib.AsyncExitStack() as stack:
        seed = await stack.enter_async_context(
            running_node(node_config(tmp_path / "seed", store, **addresses(0)))
        )
        seed._test_store = store
        acl = tmp_path / "acl"
        acl.write_bytes(render_acl([seed.key.public] if acl_trusts_seed else []))
        builders = [Builder(tmp_path / "builders", n) for n in ("alpha", "beta")]
        for b in builders:
            stack.callback(b.close)
        trust_file = tmp_path / "trusted-keys"
        for b in builders:
            add_entry(trust_file, "builder", b.name, b.public)
        config = node_config(
            tmp_path / "b",
            None,
            guix_acl=acl,
            bootstrap=(ListenAddress(*seed.network.dht.address),),
            trust_mode=mode,
            trust_file=trust_file,
            # Generous bounds: on a loaded 2-core machine a miss must not time out into a 404.
            miss_timeout=30.0,
            attestation_timeout=20.0,
            **addresses(1),
        )
        node = await stack.enter_async_context(running_node(config))
        server = AttestationServer()
        app = web.Application()
        app.router.add_get("/p2p/v1/attestations/{hash}", server.handle)
        listener = AiohttpListener(app, "127.0.0.30", 0)
        await listener.start()
        stack.push_async_callback(listener.stop)
        server.url = f"http://127.0.0.30:{listener.port}"
        session = await stack.enter_async_context(aiohttp.ClientSession())
        node.network.trust.attestations_for = server.source(session)
        yield seed, node, builders, server


async def findable(seed, node, items) -> None:
    """The DHT knows the seed holds `items` and the seed offers them; the miss path is told
    too, so that these tests judge the policy, not a DHT lookup on a loaded machine."""
    await wait_until_findable(node, items)
    for info in items:
        hash_part = info.path.rsplit("/", 1)[-1][:32]
        node.network.directory.add(hash_part, seed.network.peer_url)
        # The seed signs a baked item's narinfo in the background; it offers it once signed.
        for _ in range(400):
            if seed.index.get(hash_part).signature is not None:
                break
            await asyncio.sleep(0.025)


async def held_item(seed, node):
    """A real item baked at the seed and findable from `node`, with its attestation fields."""
    [info] = await baked(seed, 1)
    await findable(seed, node, [info])
    return info, info.path.rsplit("/", 1)[-1][:32], attested_fields(seed, info)


def attested_fields(seed, info) -> dict:
    """What an honest builder of `info` attests (the chunk root as the seed computed it)."""
    return dict(
        nar_hash=info.nar_sha256,
        nar_size=info.nar_size,
        references=tuple(r.rsplit("/", 1)[-1] for r in info.references),
        deriver=info.deriver.rsplit("/", 1)[-1] if info.deriver else None,
        chunk_root=seed.index.get(info.path.rsplit("/", 1)[-1][:32]).chunk_root,
        evidence=Evidence.BUILD_LOG,
    )


async def cli(*args: str):
    """The command line in a subprocess, off the event loop (the node answers it)."""
    return await asyncio.to_thread(p2pcache, *args, env={"PYTHONPATH": str(ROOT)}, timeout=60)


async def metrics_of(node) -> str:
    reply = await guix_client.get(node.config.admin_listen.host, node.admin_port, "/metrics")
    return reply.body.decode()


def counted(text: str, line: str) -> float:
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(line + " ")]
    return values[0] if values else 0.0


async def test_quorum_of_two_builders_serves_an_item_no_guix_key_signed(tmp_path, test_store):
    async with setup(tmp_path, test_store) as (seed, node, (alpha, beta), server):
        info, hash_part, fields = await held_item(seed, node)
        server.bundles[hash_part] = [
            alpha.bundle(info.path, **fields),
            beta.bundle(info.path, **fields),
        ]
        host = node.config.listen.host
        [reply] = await guix_client.narinfos(host, node.guix_port, [hash_part])
        assert reply.status == 200
        # Nobody's Guix key vouched for it: the node signs it itself, after the quorum.
        signed = reply.body[: reply.body.index(b"URL:")]
        assert verify_narinfo(signed, [node.key.public]) is SignatureStatus.VALID
        basename = info.path.rsplit("/", 1)[-1]
        nar = await guix_client.get(host, node.guix_port, f"/nar/{basename}")
        assert nar.status == 200 and nar.complete
        assert hashlib.sha256(nar.body).digest() == info.nar_sha256
        assert node.index.get(hash_part).is_baked
        text = await metrics_of(node)
        # Judged twice: before the narinfo was promised, and before the NAR was committed.
        line = 'p2pcache_trust_decisions_total{outcome="accepted",reason="quorum"}'
        assert counted(text, line) == 2
        assert counted(text, 'p2pcache_trust_checkpoints_observed_total{outcome="first-seen"}') == 2


async def test_upstream_signed_narinfo_is_relayed_byte_for_byte_with_builders_configured(
    tmp_path, test_store
):
    async with setup(tmp_path, test_store, mode="either", acl_trusts_seed=True) as (
        seed,
        node,
        (alpha, _),
        server,
    ):
        info, hash_part, fields = await held_item(seed, node)
        server.bundles[hash_part] = [alpha.bundle(info.path, **fields)]  # one: no quorum
        [reply] = await guix_client.narinfos(node.config.listen.host, node.guix_port, [hash_part])
        assert reply.status == 200
        at_seed = seed.index.get(hash_part)
        assert reply.body.startswith(at_seed.signed_part + at_seed.signature)


async def test_attack_conflicting_builder_refuses_the_item_end_to_end(tmp_path, test_store):
    async with setup(tmp_path, test_store, mode="either", acl_trusts_seed=True) as (
        seed,
        node,
        (alpha, beta),
        server,
    ):
        info, hash_part, fields = await held_item(seed, node)
        other = hashlib.sha256(b"what beta built").digest()
        server.bundles[hash_part] = [
            alpha.bundle(info.path, **fields),
            beta.bundle(info.path, **(fields | {"nar_hash": other})),
        ]
        # Even the upstream-signed narinfo is refused: a trusted builder disagrees.
        [reply] = await guix_client.narinfos(node.config.listen.host, node.guix_port, [hash_part])
        assert reply.status == 404
        assert node.index.get(hash_part) is None
        text = await metrics_of(node)
        assert counted(text, "p2pcache_trust_conflicts_total") == 1
        assert counted(text, 'p2pcache_trust_decisions_total{outcome="refused",reason="conflict"}')
        record = (node.config.data_dir / "trust" / "conflicts.jsonl").read_text()
        assert "beta" in record and info.path in record
        # `p2pcache challenge` shows who differs, with exit status 2.
        admin = f"{node.config.admin_listen.host}:{node.admin_port}"
        result = await cli("challenge", "--admin", admin, info.path)
        out = result.stdout.decode()
        assert result.returncode == 2, result.stderr
        assert "contents differ" in out and "alpha" in out and "beta" in out


async def test_challenge_reports_agreement_with_exit_status_zero(tmp_path, test_store):
    async with setup(tmp_path, test_store) as (seed, node, (alpha, beta), server):
        info, hash_part, fields = await held_item(seed, node)
        server.bundles[hash_part] = [
            alpha.bundle(info.path, **fields),
            beta.bundle(info.path, **fields),
        ]
        admin = f"{node.config.admin_listen.host}:{node.admin_port}"
        result = await cli("challenge", "--admin", admin, "--json", info.path)
        assert result.returncode == 0, result.stderr
        [report] = json.loads(result.stdout)
        assert report["verdict"] == "agree" and report["attested_by"] == 2
        unknown = f"{info.path.rsplit('/', 1)[0]}/{'0' * 32}-nothing-1.0"
        result = await cli("challenge", "--admin", admin, unknown)
        assert result.returncode == 0
        assert "no trusted builder attests it" in result.stdout.decode()
        for bad in ("not-a-store-item", "..%2F..%2Fetc", f"{'e' * 32}-x"):
            reply = await guix_client.get(
                node.config.admin_listen.host, node.admin_port, f"/api/v1/challenge/{bad}"
            )
            assert reply.status == 404, bad


def _forged(builder, path, fields):
    """A bad signature on an attestation that is in the builder's log (so only it fails)."""
    signed = builder.attestation(path, **fields)
    return builder.log_bundle(replace(signed, signature=bytes(63) + b"\x01"))


ATTACKS = {
    "forged-signature": (
        lambda a, b, s, p, f: [a.bundle(p, **f), _forged(b, p, f)],
        "bad-signature",
    ),
    "untrusted-key": (lambda a, b, s, p, f: [a.bundle(p, **f), s.bundle(p, **f)], "untrusted-key"),
    "one-builder-twice": (
        lambda a, b, s, p, f: [a.bundle(p, **f), a.bundle(p, **(f | {"time": 1}))],
        "quorum-not-met",
    ),
    "replayed-for-another-path": (
        lambda a, b, s, p, f: [a.bundle(p, **f), b.bundle(p[:-1] + "x", **f)],
        "wrong-store-path",
    ),
    "references-differ": (
        lambda a, b, s, p, f: [
            x.bundle(p, **(f | {"references": (f"{'9' * 32}-trojan-1.0",)})) for x in (a, b)
        ],
        "references-mismatch",
    ),
}


async def test_attacks_through_the_miss_path_serve_nothing_and_are_counted(tmp_path, test_store):
    async with setup(tmp_path, test_store) as (seed, node, (alpha, beta), server):
        stranger = Builder(tmp_path / "stranger", "mallory")
        try:
            items = await baked(seed, len(ATTACKS))
            await findable(seed, node, items)
            for (name, (make, reason)), info in zip(ATTACKS.items(), items, strict=True):
                hash_part = info.path.rsplit("/", 1)[-1][:32]
                fields = attested_fields(seed, info)
                server.bundles[hash_part] = make(alpha, beta, stranger, info.path, fields)
                host, port = node.config.listen.host, node.guix_port
                [reply] = await guix_client.narinfos(host, port, [hash_part])
                assert reply.status == 404, name
                assert node.index.get(hash_part) is None, name
                basename = info.path.rsplit("/", 1)[-1]
                assert (await guix_client.get(host, port, f"/nar/{basename}")).status == 404
                text = await metrics_of(node)
                evidence = counted(
                    text, f'p2pcache_trust_evidence_refused_total{{reason="{reason}"}}'
                )
                decided = counted(
                    text, f'p2pcache_trust_decisions_total{{outcome="refused",reason="{reason}"}}'
                )
                assert evidence or decided, (name, reason)
        finally:
            stranger.close()


async def test_attack_nar_bytes_not_matching_the_attested_hash_penalize_the_peer(
    tmp_path, test_store
):
    """The seed claims (and builders attest) a NarHash its bytes do not have."""
    async with setup(tmp_path, test_store) as (seed, node, (alpha, beta), server):
        info, hash_part, fields = await held_item(seed, node)
        claimed = hashlib.sha256(b"not the bytes the seed holds").digest()
        at_seed = seed.index.get(hash_part)
        from p2pcache.guix.narinfo import format_nar_hash, render_signature_line, render_signed_part
        from p2pcache.guix.narinfo_signature import signature_field

        signed = render_signed_part(
            at_seed.store_path,
            format_nar_hash(claimed),
            at_seed.nar_size,
            at_seed.references,
            at_seed.deriver,
        )
        line = render_signature_line(signature_field(signed, seed.key, "seed"))
        await seed.index.set_signature(hash_part, signed, line)
        fields = fields | {"nar_hash": claimed}
        server.bundles[hash_part] = [
            alpha.bundle(info.path, **fields),
            beta.bundle(info.path, **fields),
        ]
        host = node.config.listen.host
        [reply] = await guix_client.narinfos(host, node.guix_port, [hash_part])
        assert reply.status == 200  # the narinfo matches what the quorum attests
        basename = info.path.rsplit("/", 1)[-1]
        nar = await guix_client.get(host, node.guix_port, f"/nar/{basename}")
        assert not nar.complete  # the stream is cut before its last chunk
        assert not node.index.get(hash_part).is_baked  # nothing visible in the cache
        assert not any(node.nar_store.iter_names())
        assert node.network.ranking.scores[seed.network.peer_url].misbehaved >= 1


async def test_a_fork_found_after_the_narinfo_refuses_the_nar_before_commit(tmp_path, test_store):
    """The policy is asked again before the NAR is committed: evidence found meanwhile counts."""
    async with setup(tmp_path, test_store) as (seed, node, (alpha, beta), server):
        items = await baked(seed, 2)
        await findable(seed, node, items)
        info, other = items
        hash_part = info.path.rsplit("/", 1)[-1][:32]
        fields = attested_fields(seed, info)
        server.bundles[hash_part] = [
            alpha.bundle(info.path, **fields),
            beta.bundle(info.path, **fields),
        ]
        host, port = node.config.listen.host, node.guix_port
        [reply] = await guix_client.narinfos(host, port, [hash_part])
        assert reply.status == 200
        # Beta shows someone else another log of the same size: a split view, seen by the node
        # while it looks at another item (here through `challenge`, as a monitor would).
        split = Builder(tmp_path / "split", "beta")
        try:
            other_hash = other.path.rsplit("/", 1)[-1][:32]
            server.bundles[other_hash] = [split.bundle(other.path)]
            await node.network.challenge(other.path.rsplit("/", 1)[-1])
        finally:
            split.close()
        assert node.network.trust.checkpoints.is_forked(beta.origin)
        basename = info.path.rsplit("/", 1)[-1]
        nar = await guix_client.get(host, port, f"/nar/{basename}")
        assert not nar.complete  # cut before its last chunk
        assert node.index.get(hash_part) is None  # no longer promised, nothing cached
        assert not any(node.nar_store.iter_names())
        [again] = await guix_client.narinfos(host, port, [hash_part])
        assert again.status == 404
        text = await metrics_of(node)
        assert counted(text, "p2pcache_trust_forks_detected_total") == 1
        assert counted(text, 'p2pcache_trust_evidence_refused_total{reason="builder-forked"}') >= 1
