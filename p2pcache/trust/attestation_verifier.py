"""Turning the attestation bundles peers offer into statements of trusted builders, or refusals.

Each bundle (protocol/attestation.md §6) is parsed, checked against the trust policy's
builder keys and witnesses (attestation_bundle.verify_bundle: store path, builder, inclusion
proof, checkpoint signatures, attestation signature) and its checkpoint judged against the
newest one the node has seen from that builder (§7, checkpoint_store.CheckpointStore):

* the first checkpoint of a builder is accepted on its signatures and recorded;
* a newer one needs a consistency proof, asked for through the injected
  `ConsistencyProofSource`; while none can be had the old checkpoint stays and the bundle
  does not count (`awaiting-consistency-proof`): a missing proof is not evidence;
* an older one is used only when proven a prefix of the newest (else `rollback`);
* two checkpoints of one size with different roots, or a failing consistency proof served
  by the builder itself, are a fork: the evidence is kept, the builder is no longer trusted,
  the fork is counted and logged. A failing proof relayed by someone else is only missing.

With `require_log_proofs` off, a bare attestation (no bundle) counts on its signature alone,
and a bundle's attestation counts on its signature even when its log part fails.

The only I/O is the checkpoint store (SQLite, run in a worker thread) and the proof source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from p2pcache.errors import FormatError, P2PCacheError
from p2pcache.trust.attestation import (
    HEADER as ATTESTATION_HEADER,
)
from p2pcache.trust.attestation import (
    AttestationVerificationError,
    check_store_path,
    parse_attestation,
    verify_attestation,
)
from p2pcache.trust.attestation_bundle import (
    MAX_BUNDLE_SIZE,
    AttestationBundle,
    BundleFormatError,
    parse_bundle,
    verify_bundle,
)
from p2pcache.trust.checkpoint import CheckpointVerificationError, VerifiedCheckpoint
from p2pcache.trust.checkpoint_store import (
    CheckpointStore,
    CheckpointStoreError,
    ForkEvidence,
    Observation,
    Outcome,
)
from p2pcache.trust.cosignature import CosignatureVerifier
from p2pcache.trust.merkle_proof import ProofError, verify_consistency
from p2pcache.trust.policy import Refusal, Statement, TrustPolicy
from p2pcache.trust.signed_note import NoteFormatError, NoteVerificationError

log = logging.getLogger(__name__)

MAX_BUNDLES_PER_ITEM = 64
"""Bundles judged per item at most: a handful of trusted builders, each seen from a few peers.
A peer offering more cannot make the node verify more than this many signatures."""


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """RFC 9162 consistency proof hashes, and whether the builder's own node served them.

    Proofs are not signed: a failing one is evidence of a fork only when it came from the
    builder (for example from its `/p2p/v1/log/consistency/<old>/<new>` route, at an endpoint
    whose signed node information names the builder's key).
    """

    hashes: tuple[bytes, ...]
    from_builder: bool


ConsistencyProofSource = Callable[[bytes, int, int], Awaitable[ConsistencyProof | None]]
"""`(builder_key, old_size, new_size) -> proof or None`: a proof that the builder's tree of
`old_size` leaves is a prefix of its tree of `new_size`; None when none can be had now."""


async def no_consistency_proofs(builder_key: bytes, old_size: int, new_size: int) -> None:
    """The proof source of a node that cannot reach builder logs: every proof is missing."""
    return None


@dataclass
class Evidence:
    """What a set of bundles established about one store path."""

    statements: list[Statement] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    forks: list[ForkEvidence] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class VerifierHooks:
    """Where the verifier reports, for metrics (each called on the event loop's thread)."""

    checkpoint: Callable[[str], None] = lambda outcome: None
    refusal: Callable[[str], None] = lambda reason: None
    fork: Callable[[ForkEvidence], None] = lambda evidence: None


class AttestationVerifier:
    def __init__(
        self,
        checkpoints: CheckpointStore,
        consistency_proof: ConsistencyProofSource = no_consistency_proofs,
        *,
        hooks: VerifierHooks | None = None,
        max_bundles: int = MAX_BUNDLES_PER_ITEM,
    ) -> None:
        self.checkpoints = checkpoints
        self.consistency_proof = consistency_proof
        self.hooks = hooks or VerifierHooks()
        self.max_bundles = max_bundles

    async def verify(
        self, policy: TrustPolicy, store_path: str, offered: Sequence[bytes]
    ) -> Evidence:
        """Judge every offered bundle for `store_path`; never raises for hostile input."""
        evidence = Evidence()
        unique = list(dict.fromkeys(offered))
        if len(unique) > self.max_bundles:
            self._refuse(
                evidence,
                Refusal(
                    "too-many-bundles", f"{len(unique)} bundles offered, {self.max_bundles} judged"
                ),
            )
            unique = unique[: self.max_bundles]
        witnesses = [CosignatureVerifier(w.name, w.key) for w in policy.witnesses]
        for data in unique:
            try:
                statement = await self._judge(policy, store_path, data, witnesses, evidence)
            except _Refused as refused:
                self._refuse(evidence, refused.refusal)
            else:
                evidence.statements.append(statement)
        return evidence

    def _refuse(self, evidence: Evidence, refusal: Refusal) -> None:
        evidence.refusals.append(refusal)
        self.hooks.refusal(refusal.reason)
        log.info(
            "an attestation for an item does not count (%s): %s", refusal.reason, refusal.detail
        )

    async def _judge(
        self,
        policy: TrustPolicy,
        store_path: str,
        data: bytes,
        witnesses: list[CosignatureVerifier],
        evidence: Evidence,
    ) -> Statement:
        if not isinstance(data, bytes | bytearray):
            raise _Refused("structure", f"a bundle must be bytes, not {type(data).__name__}")
        if len(data) > MAX_BUNDLE_SIZE:
            raise _Refused("oversized", f"a bundle of more than {MAX_BUNDLE_SIZE} bytes")
        data = bytes(data)
        if data.startswith(ATTESTATION_HEADER.encode() + b"\n"):
            return self._bare_attestation(policy, store_path, data)
        try:
            bundle = parse_bundle(data)
        except BundleFormatError as e:
            raise _Refused(e.reason, str(e)) from None
        key = bundle.attestation.attestation.builder
        builder = policy.builder(key)
        if builder is None:
            raise _Refused("untrusted-key", f"builder {key.hex()[:16]}… is not trusted", key)
        try:
            verified = verify_bundle(
                bundle,
                key,
                store_path,
                witnesses=witnesses,
                required_cosignatures=policy.witnesses_required,
            )
        except AttestationVerificationError as e:
            raise _Refused(e.reason, str(e), key) from None
        except ProofError as e:
            if not policy.require_log_proofs:
                return self._signature_only(bundle, builder, store_path)
            raise _Refused(f"inclusion-{e.reason}", str(e), key) from None
        except (NoteFormatError, NoteVerificationError, CheckpointVerificationError) as e:
            if not policy.require_log_proofs:
                return self._signature_only(bundle, builder, store_path)
            raise _Refused(f"checkpoint-{e.reason}", str(e), key) from None
        if not policy.require_log_proofs:
            return Statement(builder, verified.attestation, logged=False)
        observation = await self._observe(verified.checkpoint)
        outcome = observation.outcome
        if outcome is Outcome.FORK_DETECTED:
            assert observation.evidence is not None
            evidence.forks.append(observation.evidence)
            self.hooks.fork(observation.evidence)
            log.error(
                "builder %s signed two checkpoints that cannot both be true (%s: %s); it is "
                "no longer trusted, the evidence is kept",
                builder.short,
                observation.evidence.kind,
                observation.evidence.detail,
            )
            raise _Refused("fork-detected", observation.evidence.detail, key)
        if outcome is Outcome.BUILDER_FORKED:
            raise _Refused("builder-forked", f"{builder.short} was found forking its log", key)
        if outcome is Outcome.AWAITING_PROOF:
            raise _Refused(
                "awaiting-consistency-proof",
                f"no consistency proof for {builder.short}'s checkpoint of size "
                f"{verified.checkpoint.size} could be had yet",
                key,
            )
        if outcome is Outcome.ROLLBACK_REFUSED:
            raise _Refused(
                "rollback",
                f"{builder.short}'s checkpoint of size {verified.checkpoint.size} is older than "
                "the newest seen and not proven its prefix",
                key,
            )
        return Statement(builder, verified.attestation, logged=True)

    def _bare_attestation(self, policy: TrustPolicy, store_path: str, data: bytes) -> Statement:
        try:
            signed = parse_attestation(data)
        except FormatError as e:
            raise _Refused("attestation", str(e)) from None
        key = signed.attestation.builder
        builder = policy.builder(key)
        if builder is None:
            raise _Refused("untrusted-key", f"builder {key.hex()[:16]}… is not trusted", key)
        if policy.require_log_proofs:
            raise _Refused("no-log-proof", "an attestation without its log proof", key)
        try:
            check_store_path(signed.attestation, store_path)
            attestation = verify_attestation(signed, key)
        except AttestationVerificationError as e:
            raise _Refused(e.reason, str(e), key) from None
        return Statement(builder, attestation, logged=False)

    def _signature_only(self, bundle: AttestationBundle, builder, store_path: str) -> Statement:
        """Log proofs are off: the attestation's own signature is all that is checked."""
        try:
            check_store_path(bundle.attestation.attestation, store_path)
            attestation = verify_attestation(bundle.attestation, builder.key)
        except AttestationVerificationError as e:
            raise _Refused(e.reason, str(e), builder.key) from None
        return Statement(builder, attestation, logged=False)

    async def _observe(self, checkpoint: VerifiedCheckpoint) -> Observation:
        try:
            observation = await asyncio.to_thread(self.checkpoints.observe, checkpoint)
            outcome = observation.outcome
            if outcome in (Outcome.AWAITING_PROOF, Outcome.ROLLBACK_REFUSED):
                proof = await self._proof(checkpoint, observation)
                if proof is not None:
                    observation = await asyncio.to_thread(
                        self.checkpoints.observe, checkpoint, proof
                    )
        except CheckpointStoreError as e:
            raise _Refused("checkpoint-store", str(e), checkpoint.log_key) from None
        self.hooks.checkpoint(observation.outcome.value)
        return observation

    async def _proof(
        self, checkpoint: VerifiedCheckpoint, observation: Observation
    ) -> tuple[bytes, ...] | None:
        """A consistency proof between the newest checkpoint and this one, if one can be had."""
        latest = observation.latest
        assert latest is not None
        older, newer = sorted(((latest.size, latest.root), (checkpoint.size, checkpoint.root)))
        try:
            proof = await self.consistency_proof(checkpoint.log_key, older[0], newer[0])
        except P2PCacheError as e:
            log.info("no consistency proof for %s: %s", checkpoint.origin, e)
            return None
        if proof is None:
            return None
        if not proof.from_builder:
            # Unsigned and relayed: it may only help. One that fails is treated as missing.
            try:
                verify_consistency(older[0], newer[0], proof.hashes, older[1], newer[1])
            except ProofError:
                return None
        return proof.hashes


class _Refused(Exception):
    def __init__(self, reason: str, detail: str, builder: bytes | None = None) -> None:
        super().__init__(detail)
        self.refusal = Refusal(reason, detail, builder)
