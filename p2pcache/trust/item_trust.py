"""The trust policy as the miss path uses it: gather attestations, verify them, decide.

`ItemTrust` is the thin async shell around the pure policy (trust/policy.py): it asks the
injected `AttestationsFor` for the bundles peers offer for an item, has the
AttestationVerifier turn them into statements of trusted builders (or refusals), calls
`decide`, and reports: every decision by outcome and reason, every conflict (also appended to
a small JSON-lines record for the operator), every fork.

The seam `AttestationsFor` is `async (hash_part) -> list[bytes]`: raw bundle bytes, from
wherever the node can get them (providers' `/p2p/v1/attestations/<hash>`, the local bundle
store). It must bound what it returns; the verifier bounds it again. Bundles are gathered
within `timeout`; an unanswered gather is no evidence, not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pcache.errors import P2PCacheError
from p2pcache.guix.narinfo import format_nar_hash
from p2pcache.trust.attestation_verifier import AttestationVerifier
from p2pcache.trust.policy import Conflict, Decision, ItemClaim, TrustPolicy, decide

log = logging.getLogger(__name__)

AttestationsFor = Callable[[str], Awaitable[list[bytes]]]
"""`(hash_part) -> [bundle bytes, ...]`: attestation bundles offered for an item."""

MAX_CONFLICT_RECORD = 16 << 20
"""The conflict record stops growing at this size (a flood of conflicts is itself logged)."""


async def no_attestations(hash_part: str) -> list[bytes]:
    """The source of a node that knows no attestations (before builders serve them)."""
    return []


class PolicyRejected(P2PCacheError):
    """The trust policy refused an item; `decision` says why."""

    def __init__(self, decision: Decision, what: str) -> None:
        super().__init__(f"{what} refused by the trust policy: {decision.explain()}")
        self.decision = decision


@dataclass(frozen=True, slots=True)
class TrustHooks:
    decision: Callable[[Decision], None] = lambda decision: None
    conflict: Callable[[Conflict], None] = lambda conflict: None


class ItemTrust:
    def __init__(
        self,
        policy: Callable[[], TrustPolicy],
        verifier: AttestationVerifier,
        attestations_for: AttestationsFor = no_attestations,
        *,
        timeout: float = 3.0,
        hooks: TrustHooks | None = None,
        conflict_record: Path | None = None,
    ) -> None:
        self._policy = policy
        self.verifier = verifier
        self.attestations_for = attestations_for
        self.timeout = timeout
        self.hooks = hooks or TrustHooks()
        self.conflict_record = conflict_record

    @property
    def policy(self) -> TrustPolicy:
        """The policy now (the trust file may have been edited since the last call)."""
        return self._policy()

    async def gather(self, hash_part: str) -> list[bytes]:
        """The bundles offered for an item, within the time bound; none if the source fails."""
        try:
            async with asyncio.timeout(self.timeout):
                return list(await self.attestations_for(hash_part))
        except TimeoutError:
            log.info("no attestations for %s within %.1f s", hash_part, self.timeout)
        except P2PCacheError as e:
            log.info("attestations for %s could not be gathered: %s", hash_part, e)
        return []

    async def judge(
        self, claim: ItemClaim, bundles: Sequence[bytes], *, what: str = "narinfo"
    ) -> Decision:
        """The policy's decision on `claim` given these bundles (reported, never raised)."""
        policy = self.policy
        statements, refusals = [], []
        if policy.needs_attestations:
            evidence = await self.verifier.verify(policy, claim.store_path, bundles)
            statements, refusals = evidence.statements, evidence.refusals
        decision = decide(policy, claim, statements, refusals)
        self.hooks.decision(decision)
        for conflict in decision.conflicts:
            self.hooks.conflict(conflict)
            log.error("conflict: %s; the item is refused", conflict.describe())
            self._record(conflict)
        if not decision.accepted:
            log.info("%s for %s %s", what, claim.store_path, decision.explain())
        return decision

    def _record(self, conflict: Conflict) -> None:
        if self.conflict_record is None:
            return
        entry = {
            "time": int(time.time()),
            "store_path": conflict.store_path,
            "builder": conflict.builder.name,
            "builder_key": conflict.builder.key.hex(),
            "attested": format_nar_hash(conflict.attested_nar_hash),
            "claimed": format_nar_hash(conflict.claimed_nar_hash),
        }
        try:
            path = self.conflict_record
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > MAX_CONFLICT_RECORD:
                log.warning("the conflict record %s is full; conflicts are only logged", path)
                return
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
        except OSError as e:
            log.warning("could not record a conflict in %s: %s", self.conflict_record, e)
