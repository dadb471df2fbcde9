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
from p2pcache.net.peer_keys import PeerKeys
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
        peer_keys: PeerKeys | None = None,
    ) -> None:
        self.gossip = gossip
        self.client = client
        self.peers = peers
        self.fanout = fanout
        self.counters = counters
        self.proof_source = proof_source
        self.peer_keys = peer_keys or PeerKeys(client)
        """Which peer is which builder (shared with the miss path's evidence source)."""

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
            evidence = result.evidence  # type: ignore[union-attr]
            self.counters.count_fork(evidence)  # as the witness and the verifier report forks
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
        if await self.peer_keys.key_of(url) == key:
            try:
                hashes = await self.client.fetch_consistency_proof(url, old, new)
            except PeerError:
                hashes = None
            if hashes is not None:
                return ConsistencyProof(tuple(hashes), from_builder=True)
        return await self.proof_source(key, old, new)


def _unsettled(result) -> bool:
    """Does this observation wait on a consistency proof (newer or older, none given)?"""
    label = outcome_label(result)
    return label in ("awaiting-proof", "rollback-refused")
