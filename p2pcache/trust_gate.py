"""The trust policy at the node's gates: before a narinfo is promised, before a NAR is kept.

`TrustGate` is what the peer network asks about trust. It owns the node's trust state (the
trust file, re-read when it changes; the checkpoints seen per builder, in
`trust/checkpoints.sqlite`; the conflict record `trust/conflicts.jsonl`) and the
`ItemTrust` the resolver judges candidates with, and it answers three questions:

* `expected_root(item)`: the chunk root every chunk of a fetched NAR is checked against (the
  one the agreeing builders attested, when the policy consulted them);
* `before_commit(item, chunk_root)`: the policy asked again before a fetched NAR becomes
  visible; refused, the item's narinfo is withdrawn and PolicyRejected raised;
* `challenge(basename)`: what each trusted builder attests for an item.

Two seams feed it, attributes so that they can be replaced on a running node (the peer API's
`/p2p/v1/attestations/<hash>` and `/p2p/v1/log/...` routes, the local bundle store):

* `attestations_for(hash_part) -> list[bytes]`: the attestation bundles offered for an item;
* `consistency_proof(builder_key, old_size, new_size) -> ConsistencyProof | None`: a proof
  between two checkpoints of a builder's log, saying whether the builder itself served it.

By default the node knows no attestation and can get no proof (which is evidence of nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from p2pcache.cache.index import CacheIndex, IndexedItem, Origin, State
from p2pcache.config import Config
from p2pcache.errors import FormatError, P2PCacheError
from p2pcache.guix.narinfo import parse_nar_hash
from p2pcache.guix.narinfo_signature import SignatureStatus, verify_narinfo
from p2pcache.guix.signing_key import GuixPublicKey
from p2pcache.guix.store_path import parse_store_path
from p2pcache.net.network_metrics import TrustCounters
from p2pcache.provenance import Provenance
from p2pcache.trust.attestation_bundle import AttestationBundle, parse_bundle
from p2pcache.trust.attestation_verifier import (
    AttestationVerifier,
    ConsistencyProofSource,
    VerifierHooks,
    no_consistency_proofs,
)
from p2pcache.trust.challenge_report import LocalCopy, challenge_report
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.item_trust import (
    AttestationsFor,
    ItemTrust,
    PolicyRejected,
    TrustHooks,
    no_attestations,
)
from p2pcache.trust.policy import Decision, ItemClaim, Mode, TrustPolicy
from p2pcache.trust.trust_file import TrustFile, TrustFileWatcher

log = logging.getLogger(__name__)


class TrustGate:
    def __init__(
        self,
        config: Config,
        index: CacheIndex,
        acl: list[GuixPublicKey],
        counters: TrustCounters,
        *,
        provenance_of: Callable[[str], Provenance | None] = lambda hash_part: None,
        withdraw: Callable[[str], Awaitable[None]] | None = None,
        carry: Callable[[str, AttestationBundle], None] = lambda hash_part, bundle: None,
    ) -> None:
        self.config = config
        self.index = index
        self.acl = acl
        self.counters = counters
        self.provenance_of = provenance_of
        self.withdraw = withdraw
        self.carry = carry
        """Keeps a bundle that counted for an accepted item, to hand on with the item."""
        self.attestations_for: AttestationsFor = no_attestations
        """Seam: the attestation bundles offered for an item (see the module docstring)."""
        self.consistency_proof: ConsistencyProofSource = no_consistency_proofs
        """Seam: consistency proofs between a builder's checkpoints."""
        self.checkpoints: CheckpointStore | None = None
        self.item_trust: ItemTrust | None = None
        self._trust_file: TrustFileWatcher | None = None
        self._policy_of: tuple[TrustFile, TrustPolicy] | None = None

    def start(self) -> None:
        config = self.config
        directory = config.data_dir / "trust"
        directory.mkdir(parents=True, exist_ok=True)
        self._trust_file = TrustFileWatcher(config.effective_trust_file())
        self.checkpoints = CheckpointStore(directory / "checkpoints.sqlite")
        counters = self.counters
        verifier = AttestationVerifier(
            self.checkpoints,
            lambda key, old, new: self.consistency_proof(key, old, new),
            hooks=VerifierHooks(
                counters.count_checkpoint, counters.count_refusal, counters.count_fork
            ),
        )
        self.item_trust = ItemTrust(
            self.policy,
            verifier,
            lambda hash_part: self.attestations_for(hash_part),
            timeout=config.attestation_timeout,
            hooks=TrustHooks(counters.count_decision, counters.count_conflict),
            conflict_record=directory / "conflicts.jsonl",
        )
        policy = self.policy()
        for problem in policy.problems():
            log.warning("trust policy: %s; no item can be accepted on builders' word", problem)
        log.info(
            "trust policy: mode %s, quorum %d of %d trusted builders, log proofs %s",
            policy.mode,
            policy.quorum,
            len(policy.builders),
            "required" if policy.require_log_proofs else "not required",
        )

    def policy(self) -> TrustPolicy:
        """The trust policy now: the [trust] settings and the trust file as it is now."""
        assert self._trust_file is not None
        trust = self._trust_file.current()
        if self._policy_of is None or self._policy_of[0] is not trust:
            config = self.config
            policy = TrustPolicy(
                mode=Mode(config.trust_mode),
                quorum=config.trust_quorum,
                require_log_proofs=config.trust_require_log_proofs,
                witnesses_required=config.trust_witnesses_required,
                accept_forced=config.trust_accept_forced,
                builders=trust.builders,
                witnesses=trust.witnesses,
            )
            self._policy_of = (trust, policy)
        return self._policy_of[1]

    def close(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.close()

    def expected_root(self, item: IndexedItem) -> bytes | None:
        """The chunk root every chunk is checked against: the builders' when they attested it."""
        found = self.provenance_of(item.hash_part)
        if found is not None and found.decision is not None:
            return found.decision.chunk_root or item.chunk_root
        return item.chunk_root

    async def before_commit(self, item: IndexedItem, chunk_root: bytes) -> None:
        """The trust policy, asked again before a fetched NAR becomes visible in the cache."""
        trust = self.item_trust
        if trust is None or not trust.policy.needs_attestations:
            return
        found = self.provenance_of(item.hash_part)
        if found is not None and found.decision is not None:
            upstream_signed = found.decision.basis in ("upstream", "both")
        else:
            upstream_signed = self._is_upstream_signed(item)
        bundles = list(found.bundles) if found is not None else []
        if not bundles:
            bundles = await trust.gather(item.hash_part)
        claim = ItemClaim(
            item.store_path,
            parse_nar_hash(item.nar_hash),
            item.nar_size,
            item.references,
            item.deriver,
            upstream_signed,
        )
        decision = await trust.judge(claim, bundles, what="NAR")
        if not decision.accepted:
            if self.withdraw is not None:
                await self.withdraw(item.hash_part)
            raise PolicyRejected(decision, f"the NAR of {item.store_path}")
        if decision.chunk_root is not None and decision.chunk_root != chunk_root:
            raise P2PCacheError(
                f"the NAR of {item.store_path} has another chunk root than its builders attest"
            )
        await self._carry_agreeing(item.hash_part, bundles, decision)

    async def _carry_agreeing(
        self, hash_part: str, bundles: list[bytes], decision: Decision
    ) -> None:
        """Keep the bundles of the builders that agreed, so this node hands them on with the
        item and it verifies elsewhere while those builders are offline. The store is a
        durable SQLite file (an fsync per write): kept in a thread, off the event loop."""
        agreeing = {builder.key for builder in decision.agreeing}
        kept = []
        for data in bundles:
            try:
                bundle = parse_bundle(data)
            except FormatError:
                continue
            if bundle.attestation.attestation.builder in agreeing:
                kept.append(bundle)
        if kept:
            await asyncio.to_thread(self._carry_all, hash_part, kept)

    def _carry_all(self, hash_part: str, bundles: list[AttestationBundle]) -> None:
        for bundle in bundles:
            try:
                self.carry(hash_part, bundle)
            except P2PCacheError as e:
                log.info("could not keep a bundle for %s: %s", hash_part, e)

    async def challenge(self, basename: str) -> dict:
        """What each trusted builder attests for a store item (`p2pcache challenge`).

        The bundles come through the same `attestations_for` seam as the miss path's and are
        verified the same way; the node's own copy (held in its cache or store) is compared
        too. Raises StorePathError for a basename that is not a store item's.
        """
        trust = self.item_trust
        assert trust is not None
        path = parse_store_path(f"{self.config.store_dir}/{basename}", self.config.store_dir)
        policy = self.policy()
        bundles = await trust.gather(path.hash_part)
        evidence = await trust.verifier.verify(policy, str(path), bundles)
        item = self.index.get(path.hash_part)
        local = None
        held = item is not None and (
            item.is_baked or (item.origin is Origin.STORE and item.state is not State.CORRUPT)
        )
        if item is not None and held and item.store_path == str(path):
            local = LocalCopy(
                parse_nar_hash(item.nar_hash), item.nar_size, item.references, item.origin
            )
        return challenge_report(
            str(path), policy.builders, evidence.statements, evidence.refusals, local
        )

    def _is_upstream_signed(self, item: IndexedItem) -> bool:
        if item.signed_part is None or item.signature is None:
            return False
        status = verify_narinfo(item.signed_part + item.signature, self.acl)
        return status is SignatureStatus.VALID
