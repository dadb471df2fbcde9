"""Checkpoint gossip's shell: a round pulls a few peers' lists (every `trust.gossip_interval`).

Bounded on every side: a round asks at most `fanout` peers (the configured gossip peers and
the peers the node has exchanged data with, in random order), each list is at most 1 MiB and
256 notes (peer_client), notes of logs this node does not track are dropped before any
signature check, and consistency proofs are asked only of the builder itself (when the peer
that relayed the note is that builder) or of the optional `proof_source`. Store work runs in a
thread (SQLite blocks).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from p2pcache.net.peer_client import PeerClient, PeerError, PeerMisbehaved
from p2pcache.trust.attestation_verifier import (
    ConsistencyProof,
    ConsistencyProofSource,
    no_consistency_proofs,
)
from p2pcache.trust.gossip import (
    CheckpointGossip,
    Ignored,
    Received,
    is_fork,
    outcome_label,
)
from p2pcache.trust.log_watch_metrics import LogWatchCounters

log = logging.getLogger(__name__)

MAX_PEER_KEYS = 1024
"""Node keys remembered per peer URL (to know when a peer is the builder itself)."""


class GossipService:
    """Pull checkpoint lists from peers and feed them to the node's CheckpointStore."""

    def __init__(
        self,
        gossip: CheckpointGossip,
        client: PeerClient,
        peers: Callable[[], Sequence[str]],
        *,
        fanout: int,
        counters: LogWatchCounters,
        proof_source: ConsistencyProofSource = no_consistency_proofs,
    ) -> None:
        self.gossip = gossip
        self.client = client
        self.peers = peers
        self.fanout = fanout
        self.counters = counters
        self.proof_source = proof_source
        self._peer_keys: dict[str, bytes] = {}

    async def pull_once(self) -> dict[str, list[str]]:
        """Ask up to `fanout` peers once: peer URL -> the outcome of each note it sent."""
        candidates = list(dict.fromkeys(self.peers()))
        chosen = random.sample(candidates, min(self.fanout, len(candidates)))
        return {url: await self.pull_from(url) for url in chosen}

    async def pull_from(self, url: str) -> list[str]:
        """Fetch one peer's list and judge every note in it."""
        try:
            notes = await self.client.fetch_checkpoint_list(url)
        except PeerMisbehaved as e:
            log.warning("checkpoint gossip: %s sent an unusable list: %s", url, e)
            self.counters.gossip_pulls["misbehaved"] += 1
            return []
        except PeerError as e:
            log.debug("checkpoint gossip: %s unavailable: %s", url, e)
            self.counters.gossip_pulls["unavailable"] += 1
            return []
        self.counters.gossip_pulls["ok"] += 1
        tracked = await asyncio.to_thread(lambda: set(self.gossip.tracked_keys()))
        outcomes = []
        for note in notes:
            label = await self._take(url, note, tracked)
            self.counters.gossip_checkpoints[label] += 1
            outcomes.append(label)
        return outcomes

    async def _take(self, url: str, note: bytes, tracked: set[bytes]) -> str:
        checked = await asyncio.to_thread(self.gossip.check, note, tracked)
        if isinstance(checked, Ignored):
            return checked.value
        result = await asyncio.to_thread(self.gossip.observe, checked)
        sizes = await asyncio.to_thread(self.gossip.proof_sizes, checked)
        if not is_fork(result) and sizes is not None and _unsettled(result):
            proof = await self._proof(url, checked, *sizes)
            if proof is not None:
                result = await asyncio.to_thread(self.gossip.observe, checked, proof)
        if is_fork(result):
            self.counters.count_fork(result)
            evidence = result.evidence  # type: ignore[union-attr]
            log.error(
                "checkpoint gossip: the log %s is FORKED (%s; checkpoint relayed by %s); "
                "evidence kept, that builder is no longer trusted",
                checked.checkpoint.origin,
                evidence.detail if evidence else "no detail",
                url,
            )
        return outcome_label(result)

    async def _proof(
        self, url: str, received: Received, old: int, new: int
    ) -> ConsistencyProof | None:
        key = received.checkpoint.log_key
        if await self._peer_key(url) == key:
            try:
                hashes = await self.client.fetch_consistency_proof(url, old, new)
            except PeerError:
                hashes = None
            if hashes is not None:
                return ConsistencyProof(tuple(hashes), from_builder=True)
        return await self.proof_source(key, old, new)

    async def _peer_key(self, url: str) -> bytes | None:
        """The identity key of the node answering at `url`, by its signed node information.

        The information must name `url` as its own peer URL: a copy of a builder's signed
        document replayed elsewhere must not make another peer's proofs count as the builder's.
        """
        key = self._peer_keys.get(url)
        if key is None:
            try:
                info = await self.client.node_info(url)
            except PeerError:
                return None
            if info.peer_url.rstrip("/") != url.rstrip("/"):
                return None
            key = info.public_key
            if len(self._peer_keys) >= MAX_PEER_KEYS:
                self._peer_keys.clear()
            self._peer_keys[url] = key
        return key


def _unsettled(result) -> bool:
    """Does this observation wait on a consistency proof (newer or older, none given)?"""
    label = outcome_label(result)
    return label in ("awaiting-proof", "rollback-refused")
