"""LogWatching on its own: the piece that starts and stops a node's gossip, witness and collector.

Until now only the multi-node tests (tests/integration/test_checkpoint_gossip_nodes.py,
test_witness_nodes.py) ran p2pcache/trust/log_watching.py; this file pins its own contract with
real parts: a real Config, node identity, BuilderLog and CheckpointStore (SQLite files in
tmp_path), real builder keys and Merkle logs (tests/trust/conftest.py), a real PeerClient, and
aiohttp peers on 127.0.0.1 (tests/trust/scripted_peer.py) answering real signed notes, proofs,
node information and cosignatures. The seams it takes (the peer list, the trusted builders, a
proof source) are given simple real functions.

Checked: the life cycle (only the configured rounds are started, under their names; stop
cancels them all, closes the witness, and may be called again); which rounds run with which
settings (gossip after a first interval and then every interval, at most `gossip_fanout` peers;
the witness at once over `[witness] logs`; the collector at once over `[builder] witnesses`);
what gossip follows (trusted builders re-read every round, configured ones, those already
accepted) and what the node serves (its own newest checkpoint first); the proof source and the
shared PeerKeys reaching gossip; forks found by gossip or by the witness reaching `on_fork` with
their evidence; and that a failing round is logged and followed by the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from p2pcache.config import Config
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.peer_keys import PeerKeys
from p2pcache.trust.attestation_verifier import ConsistencyProof
from p2pcache.trust.builder_log import TRUST_DIR, BuilderLog
from p2pcache.trust.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from p2pcache.trust.checkpoint_list import render_checkpoint_list
from p2pcache.trust.checkpoint_store import CheckpointStore, ForkEvidence
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.log_watch_metrics import LogWatchCounters
from p2pcache.trust.log_watching import LogWatching
from p2pcache.trust.witness import WITNESS_FILE, WatchedLog, Witness, witness_name
from p2pcache.trust.witness import witness_verifier as verifier_of_witness
from tests.net.peer_servers import app_server
from tests.trust.builders import builder_key, signed_attestation, store_path
from tests.trust.scripted_peer import (  # noqa: F401 (client: a fixture)
    ScriptedPeer,
    Status,
    client_fixture,
    node_info_of,
    proofs_of,
    scripted_peer,
    scripted_peers,
)
from tests.trust.test_checkpoint_store import Builder

ROUND_NAMES = {"checkpoint gossip", "witness", "cosignature collection"}
LIST_PATH = "/p2p/v1/checkpoints"
CHECKPOINT_PATH = "/p2p/v1/log/checkpoint"
CONSISTENCY_PATH = "/p2p/v1/log/consistency/"
NODE_KEY = builder_key("the watching node")
NEVER = 3600.0


def node_config(tmp_path: Path, **changes) -> Config:
    """A node whose rounds never come round unless a test shortens an interval."""
    base = Config(
        data_dir=tmp_path / "node",
        gossip_interval=NEVER,
        witness_interval=NEVER,
        cosignature_interval=NEVER,
    )
    return replace(base, **changes)


class Node:
    """What a node passes LogWatching: its store, own log, identity, counters and seams."""

    def __init__(self, tmp_path: Path, config: Config, trusted=None) -> None:
        self.config = config
        self.identity = NodeIdentity.from_seed(bytes(NODE_KEY))
        self.checkpoints = CheckpointStore(tmp_path / "node-checkpoints.sqlite")
        self.builder_log = BuilderLog.open(config.data_dir, self.identity.signing_key)
        self.forks: list = []
        self.counters = LogWatchCounters(on_fork=self.forks.append)
        self.trusted: list[bytes] = [] if trusted is None else trusted
        self.trusted_reads = 0
        self.watching = LogWatching(
            config,
            self.checkpoints,
            self.builder_log,
            self.identity,
            self.counters,
            trusted_builders=self.trusted_builders,
        )

    def trusted_builders(self) -> list[bytes]:
        self.trusted_reads += 1
        return list(self.trusted)

    def close(self) -> None:
        self.builder_log.close()
        self.checkpoints.close()


@contextlib.asynccontextmanager
async def watching_node(tmp_path: Path, **changes) -> AsyncIterator[Node]:
    node = Node(tmp_path, node_config(tmp_path, **changes))
    try:
        yield node
    finally:
        await node.watching.stop()
        node.close()


def round_tasks() -> dict[str, asyncio.Task]:
    return {t.get_name(): t for t in asyncio.all_tasks() if t.get_name() in ROUND_NAMES}


async def until(done, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not done():
            await asyncio.sleep(0.01)


def relaying(peer: ScriptedPeer, *notes: bytes) -> ScriptedPeer:
    """A peer that is not the builder, passing on `notes` by gossip."""
    peer.checkpoints = render_checkpoint_list(list(notes))
    peer.node = node_info_of(NodeIdentity.generate())
    return peer


# -- life cycle ---------------------------------------------------------------------------------


async def test_by_default_only_gossip_is_started_and_stop_cancels_it(tmp_path, client):
    async with watching_node(tmp_path) as node:
        watching = node.watching
        assert watching.witness is None
        assert round_tasks() == {}
        await watching.start(client, lambda: [])
        tasks = round_tasks()
        assert set(tasks) == {"checkpoint gossip"}
        assert watching.gossip_service is not None
        assert watching.gossip_service.fanout == node.config.gossip_fanout
        assert watching.witness_service is None and watching.collector is None
        await watching.stop()
        assert round_tasks() == {}
        assert tasks["checkpoint gossip"].cancelled()
        assert not (node.config.data_dir / TRUST_DIR / WITNESS_FILE).exists()
        await watching.stop()  # again: nothing left to stop, no error


async def test_stop_before_start_is_harmless_and_closes_the_witness(tmp_path):
    async with watching_node(tmp_path, witness_enabled=True) as node:
        witness = node.watching.witness
        assert witness is not None
        await node.watching.stop()
        assert node.watching.witness is None
        with pytest.raises(sqlite3.ProgrammingError):
            witness.cosigned("p2pcache/builder/" + "00" * 32)


async def test_every_configured_round_is_started_and_all_are_stopped(tmp_path, client):
    async with watching_node(
        tmp_path,
        witness_enabled=True,
        witness_logs=(WatchedLog(bytes(32), "http://127.0.0.1:9"),),
        builder_witnesses=("http://127.0.0.1:9",),
    ) as node:
        witness = node.watching.witness
        await node.watching.start(client, lambda: [])
        tasks = round_tasks()
        assert set(tasks) == ROUND_NAMES
        assert node.watching.witness_service.logs == node.config.witness_logs
        assert node.watching.collector.witness_urls == node.config.builder_witnesses
        await node.watching.stop()
        assert round_tasks() == {}
        assert all(t.done() for t in tasks.values())
        assert node.watching.witness is None
        with pytest.raises(sqlite3.ProgrammingError):
            witness.cosigned("p2pcache/builder/" + "00" * 32)


# -- checkpoint gossip --------------------------------------------------------------------------


async def test_gossip_waits_one_interval_then_pulls_every_interval(tmp_path, client, builder):
    interval = 0.3
    asked_at: list[float] = []
    async with (
        watching_node(tmp_path, gossip_interval=interval) as node,
        scripted_peer() as peer,
    ):
        node.trusted.append(builder.public)
        notes = render_checkpoint_list([builder.checkpoint(20).note])

        def answer(scripted, request):
            asked_at.append(time.monotonic())
            return notes

        peer.checkpoints = answer
        started = time.monotonic()
        await node.watching.start(client, lambda: [peer.url])
        await asyncio.sleep(interval / 2)
        assert asked_at == []  # peers are still being met
        await until(lambda: len(asked_at) >= 2)
        await node.watching.stop()
        assert node.checkpoints.latest(builder.origin).size == 20
    assert asked_at[0] - started >= interval * 0.9
    assert asked_at[1] - asked_at[0] >= interval * 0.9
    assert node.counters.gossip_pulls["ok"] >= 2
    assert node.counters.gossip_checkpoints["first-seen"] == 1


async def test_a_gossip_round_asks_at_most_gossip_fanout_peers(tmp_path, client, builder):
    async with (
        watching_node(tmp_path, gossip_fanout=1) as node,
        scripted_peers(3) as peers,
    ):
        for peer in peers:
            relaying(peer, builder.checkpoint(20).note)
        await node.watching.start(client, lambda: [p.url for p in peers])
        outcomes = await node.watching.gossip_service.pull_once()
    assert len(outcomes) == 1
    assert sum(p.asked_for(LIST_PATH) for p in peers) == 1


async def test_trusted_builders_are_read_again_every_round(tmp_path, client, builder):
    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        relaying(peer, builder.checkpoint(20).note)
        await node.watching.start(client, lambda: [peer.url])
        await until(lambda: node.counters.gossip_checkpoints["unknown-origin"] >= 2)
        assert node.checkpoints.latest(builder.origin) is None
        reads = node.trusted_reads
        node.trusted.append(builder.public)  # the trust file was edited
        await until(lambda: node.counters.gossip_checkpoints["first-seen"] == 1)
        await node.watching.stop()
        assert node.checkpoints.latest(builder.origin).size == 20
    assert node.trusted_reads > reads >= 2


async def test_tracked_keys_are_trusted_configured_and_already_accepted_builders(tmp_path, builder):
    trusted, configured = builder_key("trusted"), builder_key("configured")
    other_log = "example.org/not-a-builder-log"
    async with watching_node(tmp_path, gossip_builders=(bytes(configured.verify_key),)) as node:
        node.trusted.append(bytes(trusted.verify_key))
        accepted_builder = Builder(tmp_path, "kept")
        accepted_builder.grow(5)
        node.checkpoints.observe(accepted_builder.checkpoint(5))
        accepted_builder.log.close()
        # A checkpoint of a log that is no builder's is in the store too: it names no key.
        stranger = Checkpoint(other_log, 3, builder.log.root(3))
        node.checkpoints.observe(
            verify_checkpoint(
                sign_checkpoint(stranger, builder.key), builder.public, origin=other_log
            )
        )
        assert node.watching.tracked_keys() == {
            bytes(trusted.verify_key),
            bytes(configured.verify_key),
            accepted_builder.public,
        }


async def test_the_node_serves_its_own_newest_checkpoint_first(tmp_path, builder):
    async with watching_node(tmp_path) as node:
        node.checkpoints.observe(builder.checkpoint(20))
        gossip = node.watching.gossip
        assert gossip.newest_notes() == [builder.checkpoint(20).note]  # nothing attested yet
        key = node.identity.signing_key
        node.builder_log.append([signed_attestation(key, store_path(1))])
        first = gossip.newest_notes()
        assert len(first) == 2
        assert verify_checkpoint(first[0], node.identity.public_key).size == 1
        node.builder_log.append([signed_attestation(key, store_path(2))])
        assert verify_checkpoint(gossip.newest_notes()[0], node.identity.public_key).size == 2


async def test_gossip_uses_the_given_proof_source_for_a_relayed_newer_checkpoint(
    tmp_path, client, builder
):
    asked: list[tuple[bytes, int, int]] = []

    async def proof_source(key: bytes, old: int, new: int) -> ConsistencyProof | None:
        asked.append((key, old, new))
        return ConsistencyProof(tuple(builder.log.consistency_proof(old, new)), False)

    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        node.trusted.append(builder.public)
        node.checkpoints.observe(builder.checkpoint(20))
        relaying(peer, builder.checkpoint(30).note)
        await node.watching.start(client, lambda: [peer.url], proof_source=proof_source)
        await until(lambda: node.counters.gossip_checkpoints["advanced"] == 1)
        await node.watching.stop()
        assert node.checkpoints.latest(builder.origin).size == 30
    assert asked[0] == (builder.public, 20, 30)
    assert peer.asked_for(CONSISTENCY_PATH) == 0  # a relay is never asked for proofs


async def test_without_a_proof_source_a_relayed_newer_checkpoint_waits(tmp_path, client, builder):
    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        node.trusted.append(builder.public)
        node.checkpoints.observe(builder.checkpoint(20))
        relaying(peer, builder.checkpoint(30).note)
        await node.watching.start(client, lambda: [peer.url])
        await until(lambda: node.counters.gossip_checkpoints["awaiting-proof"] >= 2)
        await node.watching.stop()
        assert node.checkpoints.latest(builder.origin).size == 20


async def test_gossip_learns_builders_into_the_shared_peer_keys(tmp_path, client, builder):
    keys = PeerKeys(client)
    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        node.trusted.append(builder.public)
        node.checkpoints.observe(builder.checkpoint(20))
        peer.checkpoints = render_checkpoint_list([builder.checkpoint(35).note])
        peer.node = node_info_of(NodeIdentity.from_seed(bytes(builder.key)))
        peer.consistency = proofs_of(builder.log)
        await node.watching.start(client, lambda: [peer.url], peer_keys=keys)
        await until(lambda: node.counters.gossip_checkpoints["advanced"] == 1)
        await node.watching.stop()
        assert node.checkpoints.latest(builder.origin).size == 35
    assert node.watching.gossip_service.peer_keys is keys
    assert keys.url_of(builder.public) == peer.url
    assert peer.asked_for(CONSISTENCY_PATH + "20/35") == 1


async def test_a_fork_found_by_gossip_reaches_on_fork_with_its_evidence(
    tmp_path, client, builder, forked
):
    honest, forged = builder.checkpoint(25), forked.checkpoint(25)
    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        node.trusted.append(builder.public)
        node.checkpoints.observe(honest)
        relaying(peer, forged.note)
        await node.watching.start(client, lambda: [peer.url])
        await until(lambda: node.forks)
        await node.watching.stop()
        assert node.checkpoints.is_forked(builder.origin)
    (evidence,) = node.forks
    assert isinstance(evidence, ForkEvidence)
    assert evidence.kind == "same-size"
    assert {evidence.first_note, evidence.second_note} == {honest.note, forged.note}
    assert node.counters.gossip_checkpoints["fork-detected"] == 1


async def test_a_failing_gossip_round_is_logged_and_the_next_one_runs(
    tmp_path, client, builder, caplog
):
    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        relaying(peer, builder.checkpoint(20).note)
        calls = 0

        def trusted_builders() -> list[bytes]:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise RuntimeError("the trust file cannot be read just now")
            return [builder.public]

        node.watching.trusted_builders = trusted_builders
        with caplog.at_level(logging.ERROR, logger="p2pcache.trust.periodic_rounds"):
            await node.watching.start(client, lambda: [peer.url])
            await until(lambda: node.counters.gossip_checkpoints["first-seen"] == 1)
            await node.watching.stop()
        assert node.checkpoints.latest(builder.origin).size == 20
    failures = [r for r in caplog.records if "checkpoint gossip failed" in r.getMessage()]
    assert len(failures) == 2


async def test_a_failing_peer_list_does_not_stop_later_gossip_rounds(tmp_path, client, builder):
    async with (
        watching_node(tmp_path, gossip_interval=0.03) as node,
        scripted_peer() as peer,
    ):
        node.trusted.append(builder.public)
        relaying(peer, builder.checkpoint(20).note)
        asked = 0

        def peers() -> list[str]:
            nonlocal asked
            asked += 1
            if asked == 1:
                raise OSError("the peer table is being rewritten")
            return [peer.url]

        await node.watching.start(client, peers)
        await until(lambda: node.counters.gossip_checkpoints["first-seen"] == 1)
        await node.watching.stop()
    assert asked >= 2
    assert peer.asked_for(LIST_PATH) >= 1


# -- the witness --------------------------------------------------------------------------------


async def test_the_witness_is_made_from_the_node_identity_in_the_data_directory(tmp_path):
    async with watching_node(tmp_path, witness_enabled=True) as node:
        witness = node.watching.witness
        assert witness.name == witness_name(node.identity.public_key)
        assert (node.config.data_dir / TRUST_DIR / WITNESS_FILE).exists()


async def test_the_witness_watches_its_logs_at_once_and_every_interval(
    tmp_path, client, builder, caplog
):
    async with scripted_peer() as peer:
        peer.checkpoint = builder.checkpoint(20).note
        peer.consistency = proofs_of(builder.log)
        logs = (WatchedLog(builder.public, peer.url),)
        async with watching_node(
            tmp_path, witness_enabled=True, witness_logs=logs, witness_interval=0.03
        ) as node:
            witness = node.watching.witness
            with caplog.at_level(logging.INFO, logger="p2pcache.trust.log_watching"):
                await node.watching.start(client, lambda: [peer.url])
            await until(lambda: node.counters.witness_checkpoints["cosigned"] == 1)
            await until(lambda: node.counters.witness_checkpoints["already-cosigned"] >= 1)
            peer.checkpoint = builder.checkpoint(32).note  # the log grew
            await until(lambda: node.counters.witness_checkpoints["cosigned"] == 2)
            cosigned = witness.cosigned(builder.origin)
            await node.watching.stop()
    verified = verify_checkpoint(
        cosigned,
        builder.public,
        witnesses=[verifier_of_witness(node.identity.public_key)],
        required_cosignatures=1,
    )
    assert verified.size == 32
    assert peer.asked_for(CONSISTENCY_PATH + "20/32") >= 1
    assert peer.asked_for(LIST_PATH) == 0  # gossip's interval has not come round
    assert any(
        "witnessing 1 builder log(s) as " + witness.name in r.getMessage() for r in caplog.records
    )


async def test_a_fork_found_by_the_witness_reaches_on_fork_with_its_evidence(
    tmp_path, client, builder, forked
):
    async with scripted_peer() as peer:
        peer.checkpoint = builder.checkpoint(20).note
        peer.consistency = proofs_of(builder.log)
        logs = (WatchedLog(builder.public, peer.url),)
        async with watching_node(
            tmp_path, witness_enabled=True, witness_logs=logs, witness_interval=0.03
        ) as node:
            await node.watching.start(client, lambda: [])
            await until(lambda: node.counters.witness_checkpoints["cosigned"] == 1)
            # The builder now serves a rewritten history, and proofs from it.
            peer.consistency = proofs_of(forked.log)
            peer.checkpoint = forked.checkpoint(30).note
            await until(lambda: node.forks)
            await node.watching.stop()
    (evidence,) = node.forks
    assert isinstance(evidence, ForkEvidence)
    assert evidence.kind == "inconsistent"
    assert evidence.first_note == builder.checkpoint(20).note
    assert evidence.second_note == forked.checkpoint(30).note
    assert node.counters.witness_checkpoints["fork-detected"] == 1


async def test_an_unavailable_watched_builder_does_not_stop_later_witness_rounds(
    tmp_path, client, builder
):
    async with scripted_peer() as peer:
        peer.checkpoint = Status(500)
        logs = (WatchedLog(builder.public, peer.url),)
        async with watching_node(
            tmp_path, witness_enabled=True, witness_logs=logs, witness_interval=0.03
        ) as node:
            await node.watching.start(client, lambda: [])
            await until(lambda: node.counters.witness_checkpoints["unavailable"] >= 2)
            peer.checkpoint = builder.checkpoint(20).note
            await until(lambda: node.counters.witness_checkpoints["cosigned"] == 1)
            await node.watching.stop()


# -- cosignature collection ---------------------------------------------------------------------


class WitnessPeer(ScriptedPeer):
    """A ScriptedPeer that also serves `GET /p2p/v1/witness/cosignature/<builder key>`."""

    def __init__(self) -> None:
        super().__init__()
        self.cosignature = None

    def application(self) -> web.Application:
        app = super().application()
        app.router.add_get("/p2p/v1/witness/cosignature/{key}", self._handler("cosignature"))
        return app


async def test_the_collector_attaches_its_witnesses_cosignatures_at_once(tmp_path, client):
    witness_identity = NodeIdentity.from_seed(bytes(builder_key("a witness")))
    peer = WitnessPeer()
    async with app_server(peer.application(), "127.0.0.1") as url:
        peer.url = url
        async with watching_node(
            tmp_path, builder_witnesses=(url,), cosignature_interval=0.03
        ) as node:
            key = node.identity.signing_key
            node.builder_log.append([signed_attestation(key, store_path(i)) for i in range(3)])
            own = node.builder_log.checkpoint()
            cosigner = Cosigner(
                witness_name(witness_identity.public_key), witness_identity.signing_key
            )
            with Witness(tmp_path / "the-witness.sqlite", cosigner) as witness:
                verified = verify_checkpoint(own.note, node.identity.public_key)
                cosigned = witness.consider(verified, None).cosigned
            peer.node = node_info_of(witness_identity)
            peer.cosignature = cosigned
            await node.watching.start(client, lambda: [])
            await until(lambda: node.counters.cosignatures_collected["attached"] == 1)
            await until(lambda: node.counters.cosignatures_collected["unchanged"] >= 1)
            served = node.builder_log.checkpoint().note
            await node.watching.stop()
    assert peer.asked_for(f"/p2p/v1/witness/cosignature/{node.identity.public_key.hex()}") >= 2
    checked = verify_checkpoint(
        served,
        node.identity.public_key,
        witnesses=[verifier_of_witness(witness_identity.public_key)],
        required_cosignatures=1,
    )
    assert checked.size == 3
