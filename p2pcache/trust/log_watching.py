"""Everything a node does to keep builders' logs honest, started and stopped as one piece.

- checkpoint gossip (always): serve the newest accepted checkpoint per tracked builder log,
  pull peers' lists every `trust.gossip_interval` (gossip.py, gossip_service.py);
- the witness role (`[witness] enabled`): cosign watched builders' checkpoints after a
  consistency check (witness.py, witness_service.py);
- on a builder with `[builder] witnesses`: collect their cosignatures and attach them to the
  checkpoints it serves (cosignature_collector.py).

The node's CheckpointStore is passed in (the attestation verifier feeds the same one), so a
fork is found whichever way the two checkpoints arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from p2pcache.config import Config
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_keys import PeerKeys
from p2pcache.trust.attestation_verifier import ConsistencyProofSource, no_consistency_proofs
from p2pcache.trust.builder_log import TRUST_DIR, BuilderLog
from p2pcache.trust.checkpoint_list import MAX_LISTED_CHECKPOINTS
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.cosignature_collector import CosignatureCollector
from p2pcache.trust.gossip import CheckpointGossip, builder_key_of
from p2pcache.trust.gossip_service import GossipService
from p2pcache.trust.log_watch_metrics import LogWatchCounters
from p2pcache.trust.periodic_rounds import PeriodicRounds
from p2pcache.trust.witness import WITNESS_FILE, Witness, witness_name
from p2pcache.trust.witness_service import WitnessService

log = logging.getLogger(__name__)


class LogWatching:
    """Gossip, witness and cosignature collection of one node."""

    def __init__(
        self,
        config: Config,
        checkpoints: CheckpointStore,
        builder_log: BuilderLog,
        identity: NodeIdentity,
        counters: LogWatchCounters,
        *,
        trusted_builders: Callable[[], Iterable[bytes]] = tuple,
    ) -> None:
        self.config = config
        self.trusted_builders = trusted_builders
        """The keys of the builders the trust policy names (re-read on every round)."""
        self.checkpoints = checkpoints
        self.builder_log = builder_log
        self.counters = counters
        self.gossip = CheckpointGossip(
            checkpoints, self.tracked_keys, own_checkpoint=self._own_checkpoint
        )
        self.witness: Witness | None = None
        if config.witness_enabled:
            cosigner = Cosigner(witness_name(identity.public_key), identity.signing_key)
            self.witness = Witness(Path(config.data_dir) / TRUST_DIR / WITNESS_FILE, cosigner)
        self.witness_service: WitnessService | None = None
        self.gossip_service: GossipService | None = None
        self.collector: CosignatureCollector | None = None
        self._rounds: list[PeriodicRounds] = []

    def tracked_keys(self) -> set[bytes]:
        """Builders whose logs gossip follows: trusted, configured, and those already accepted."""
        known = self.checkpoints.latest_checkpoints(MAX_LISTED_CHECKPOINTS)
        keys = {builder_key_of(c.origin) for c in known}
        tracked = set(self.trusted_builders()) | set(self.config.gossip_builders)
        return tracked | {k for k in keys if k is not None}

    def _own_checkpoint(self) -> bytes | None:
        """The own log's newest checkpoint, signing one if the log grew (as the log route does)."""
        own = self.builder_log.checkpoint()
        return None if own is None else own.note

    async def start(
        self,
        client: PeerClient,
        peers: Callable[[], Sequence[str]],
        proof_source: ConsistencyProofSource = no_consistency_proofs,
        peer_keys: PeerKeys | None = None,
    ) -> None:
        """Start the rounds: gossip after a first interval (peers are still being met), the
        witness and the cosignature collector at once."""
        config = self.config
        self.gossip_service = GossipService(
            self.gossip,
            client,
            peers,
            fanout=config.gossip_fanout,
            counters=self.counters,
            proof_source=proof_source,
            peer_keys=peer_keys,
        )
        rounds = [
            PeriodicRounds(
                "checkpoint gossip",
                self.gossip_service.pull_once,
                config.gossip_interval,
                first_delay=config.gossip_interval,
            )
        ]
        if self.witness is not None:
            self.witness_service = WitnessService(
                self.witness, client, config.witness_logs, counters=self.counters
            )
            rounds.append(
                PeriodicRounds("witness", self.witness_service.watch_once, config.witness_interval)
            )
            log.info(
                "witnessing %d builder log(s) as %s, every %.0f s",
                len(config.witness_logs),
                self.witness.name,
                config.witness_interval,
            )
        if config.builder_witnesses:
            self.collector = CosignatureCollector(
                self.builder_log, client, config.builder_witnesses, counters=self.counters
            )
            rounds.append(
                PeriodicRounds(
                    "cosignature collection",
                    self.collector.collect_once,
                    config.cosignature_interval,
                )
            )
        for periodic in rounds:
            await periodic.start()
            self._rounds.append(periodic)

    async def stop(self) -> None:
        for periodic in self._rounds:
            await periodic.stop()
        self._rounds.clear()
        if self.witness is not None:
            self.witness.close()
            self.witness = None
