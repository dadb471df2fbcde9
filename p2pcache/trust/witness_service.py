"""The witness's running shell: every interval, fetch each watched builder's checkpoint, judge it.

For each log in `[witness] logs` (a builder key and its peer URL): fetch the newest checkpoint
(`GET /p2p/v1/log/checkpoint`), check the builder's signature, ask the builder itself for a
consistency proof from the last checkpoint cosigned (`GET /p2p/v1/log/consistency/<old>/<new>`),
then let witness.py decide. Logs are watched one after another (a witness watches a few logs;
each request is bounded by the peer client's limits), so a round is bounded too.

An unreachable builder, a missing proof or a checkpoint that does not verify are no evidence:
they are counted and retried next round. Only the witness's own verdict (fork-detected) is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from p2pcache.errors import P2PCacheError
from p2pcache.net.peer_client import PeerClient, PeerError
from p2pcache.trust.checkpoint import verify_checkpoint
from p2pcache.trust.log_watch_metrics import LogWatchCounters
from p2pcache.trust.witness import WatchedLog, Witness, WitnessOutcome, WitnessVerdict

log = logging.getLogger(__name__)


class WitnessService:
    """Watch builder logs and cosign what extends them, one round at a time (periodic_rounds.py)."""

    def __init__(
        self,
        witness: Witness,
        client: PeerClient,
        logs: Sequence[WatchedLog],
        *,
        counters: LogWatchCounters,
    ) -> None:
        self.witness = witness
        self.client = client
        self.logs = tuple(logs)
        self.counters = counters

    async def watch_once(self) -> dict[str, str]:
        """One round over every watched log: origin -> what happened (an outcome word)."""
        results = {}
        for watched in self.logs:
            try:
                results[watched.origin] = await self._watch(watched)
            except Exception:  # one log's trouble must not stop the witness
                log.exception("witnessing %s failed; retried next round", watched.origin)
                results[watched.origin] = "error"
            self.counters.witness_checkpoints[results[watched.origin]] += 1
        return results

    async def _watch(self, watched: WatchedLog) -> str:
        try:
            note = await self.client.fetch_checkpoint(watched.url)
        except PeerError as e:
            log.info("witness: no checkpoint from %s (%s); retried next round", watched.url, e)
            return "unavailable"
        if note is None:
            return "no-checkpoint"
        try:
            verified = verify_checkpoint(note, watched.key)
        except P2PCacheError as e:
            log.warning("witness: %s served a checkpoint that does not verify: %s", watched.url, e)
            return "bad-checkpoint"
        last = await asyncio.to_thread(self.witness.last_size, watched.origin)
        proof = None
        if last is not None and 0 < last < verified.size:
            try:
                proof = await self.client.fetch_consistency_proof(watched.url, last, verified.size)
            except PeerError as e:  # unreachable, or a proof of the wrong length: no evidence
                log.info("witness: no consistency proof from %s (%s)", watched.url, e)
        verdict = await asyncio.to_thread(self.witness.consider, verified, proof)
        self._report(watched, verified.size, verdict)
        return verdict.outcome.value

    def _report(self, watched: WatchedLog, size: int, verdict: WitnessVerdict) -> None:
        if verdict.outcome is WitnessOutcome.COSIGNED:
            log.info("witness: cosigned the checkpoint of %s at size %d", watched.origin, size)
        elif verdict.outcome is WitnessOutcome.FORK_DETECTED:
            self.counters.count_fork(verdict.evidence)
            detail = verdict.evidence.detail if verdict.evidence else "no detail"
            log.error(
                "witness: the log %s (at %s) is FORKED (%s); evidence kept in the witness "
                "database, and this witness never cosigns it again",
                watched.origin,
                watched.url,
                detail,
            )
        elif verdict.outcome is WitnessOutcome.OLDER:
            log.warning(
                "witness: %s served a checkpoint of size %d, older than the one cosigned; "
                "not cosigned",
                watched.url,
                size,
            )
