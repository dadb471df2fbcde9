"""What `p2pcache attest` does: sign, for items this machine built itself, what it built.

For each chosen store item (protocol/attestation.md §2):

1. Evidence. The Guix database does not say built or substituted; the build log does: the
   daemon keeps one for each derivation it builds locally (build_log.py), none for an item it
   substitutes. The item's deriver (the one its row records, then every valid deriver, as Guix's
   `log-file` does) with a build log gives evidence `build-log`. Without one the item is
   refused, unless the operator forces it: then its evidence is `forced`, for all to see. A
   node that only substituted an item would merely echo the upstream, so it never attests it.
   With `--check` the evidence is instead a rebuild here that reproduced the item
   (check_evidence.py, evidence `check`).
2. Facts. NarHash, NarSize, references and deriver come from the Guix database (what the
   daemon recorded when it registered the build); the system from the derivation that was
   built; the chunk root from the item's chunk table in the cache (so the item must be baked:
   the CLI bakes it first, and baking checks the NAR against that NarHash).
3. Idempotence. An item whose newest own attestation already says the same (hash, size,
   references, deriver, system, chunk root) is not attested again; only a better word is
   added (`build-log` where it had been `forced`).
4. Sign with the identity key, append all in one transaction (durable), then sign a checkpoint.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from p2pcache.cache.index import CacheIndex
from p2pcache.errors import P2PCacheError
from p2pcache.guix.derivation import MAX_DERIVATION_SIZE, parse_derivation_system
from p2pcache.guix.narinfo import format_nar_hash
from p2pcache.guix.store_db import GuixStoreDatabase, StoreItemInfo
from p2pcache.trust.attestation import Attestation, Evidence, SignedAttestation, sign_attestation
from p2pcache.trust.build_log import find_build_log
from p2pcache.trust.builder_log import BuilderLog, hash_part_of

log = logging.getLogger(__name__)


class AttestStatus(enum.StrEnum):
    ATTESTED = "attested"
    ALREADY = "already-attested"
    REFUSED = "refused"


class Refusal(enum.StrEnum):
    """Why an item was not attested (a stable word for summaries and tests)."""

    NO_BUILD_LOG = "no-build-log"
    NOT_BAKED = "not-baked"
    HASH_MISMATCH = "hash-mismatch"
    NO_SYSTEM = "no-system"
    NO_SIZE = "no-size"
    NO_DERIVATION = "no-derivation"
    """--check: no valid derivation to rebuild it from."""
    NOT_REPRODUCED = "not-reproduced"
    """--check: the rebuild gave different bits."""
    CHECK_FAILED = "check-failed"
    CHECK_TIMED_OUT = "check-timed-out"
    HASH_CHANGED = "hash-changed"
    """--check: the Guix database's NarHash for the item changed while it was rebuilt."""


@dataclass(frozen=True, slots=True)
class AttestSettings:
    store_dir: str
    store_root: Path
    """Where the store's files are on disk (the .drv files are read from here)."""
    build_log_dir: Path


@dataclass(frozen=True, slots=True)
class Plan:
    """An item with the evidence that it was built here (None: no evidence found)."""

    info: StoreItemInfo
    evidence: Evidence | None
    built_by: str | None
    """The derivation whose build log was found (it names the system)."""


@dataclass(frozen=True, slots=True)
class AttestOutcome:
    store_path: str
    status: AttestStatus
    message: str
    """A sentence for the user."""
    evidence: Evidence | None = None
    index: int | None = None
    refusal: Refusal | None = None


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def same_statement(old: Attestation, new: Attestation) -> bool:
    """Do two attestations of one builder say the same about the item (time aside)?"""
    keys = ("store_path", "nar_hash", "nar_size", "references", "deriver", "system", "chunk_root")
    return all(getattr(old, k) == getattr(new, k) for k in keys)


def adds_nothing(old: Attestation, new: Attestation) -> bool:
    """Would `new` repeat `old`? Yes if it says the same with no better evidence."""
    return same_statement(old, new) and not (old.evidence.is_forced and not new.evidence.is_forced)


class Attester:
    """Finds evidence, builds, signs and logs attestations for this node's own builds."""

    def __init__(
        self,
        settings: AttestSettings,
        db: GuixStoreDatabase,
        index: CacheIndex,
        builder_log: BuilderLog,
        signing_key: nacl.signing.SigningKey,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.db = db
        self.index = index
        self.builder_log = builder_log
        self.signing_key = signing_key
        self.now = now
        self._systems: dict[str, str | None] = {}

    async def plan(self, info: StoreItemInfo) -> Plan:
        """Look for the build log of the item's deriver(s)."""
        derivers = [info.deriver] if info.deriver else []
        derivers += [d for d in await self.db.valid_derivers(info.path) if d not in derivers]
        for drv in derivers:
            found = find_build_log(self.settings.build_log_dir, _basename(drv))
            if found is not None:
                log.debug("%s: build log %s", info.path, found)
                return Plan(info, Evidence.BUILD_LOG, drv)
        return Plan(info, None, derivers[0] if derivers else None)

    def refusal_without_evidence(self, plan: Plan) -> AttestOutcome:
        info = plan.info
        if plan.built_by is None:
            why = "it has no deriver, so it was not built (it was added or substituted)"
        else:
            why = (
                f"there is no build log of {_basename(plan.built_by)} under "
                f"{self.settings.build_log_dir}/drvs: it was substituted, not built here "
                "(or its log was deleted)"
            )
        return AttestOutcome(
            info.path,
            AttestStatus.REFUSED,
            f"{info.path} not attested: {why}; name it with --force to attest it anyway "
            "(marked forced)",
            refusal=Refusal.NO_BUILD_LOG,
        )

    def attest(
        self,
        plans: Sequence[Plan],
        *,
        force: bool = False,
        on_item: Callable[[AttestOutcome, StoreItemInfo], None] | None = None,
    ) -> list[AttestOutcome]:
        """Attest the planned items (refusing those without evidence unless `force`), append
        the new attestations to the log in one transaction, and sign a checkpoint."""
        outcomes: list[AttestOutcome | None] = []
        pending: list[tuple[int, SignedAttestation]] = []
        for plan in plans:
            outcome, signed = self._one(plan, force)
            outcomes.append(outcome)
            if signed is not None:
                pending.append((len(outcomes) - 1, signed))
            elif on_item is not None and outcome is not None:
                on_item(outcome, plan.info)
        if pending:
            indexes = self.builder_log.append([s for _, s in pending])
            for (position, signed), index in zip(pending, indexes, strict=True):
                a = signed.attestation
                outcome = AttestOutcome(
                    a.store_path,
                    AttestStatus.ATTESTED,
                    f"attested {a.store_path} ({a.evidence.value}), log entry {index}",
                    evidence=a.evidence,
                    index=index,
                )
                outcomes[position] = outcome
                if on_item is not None:
                    on_item(outcome, plans[position].info)
        if self.builder_log.size:
            self.builder_log.checkpoint()
        return [o for o in outcomes if o is not None]

    def _one(
        self, plan: Plan, force: bool
    ) -> tuple[AttestOutcome | None, SignedAttestation | None]:
        info = plan.info
        evidence = plan.evidence
        if evidence is None:
            if not force:
                return self.refusal_without_evidence(plan), None
            evidence = Evidence.FORCED
        try:
            attestation = self._attestation(plan, evidence)
        except _Refused as refused:
            return AttestOutcome(
                info.path, AttestStatus.REFUSED, str(refused), refusal=refused.refusal
            ), None
        previous = self.builder_log.latest_own(hash_part_of(info.path))
        if previous is not None and adds_nothing(previous[1].attestation, attestation):
            index, old = previous
            evidence = old.attestation.evidence
            message = f"{info.path} is already attested ({evidence.value}), log entry {index}"
            return AttestOutcome(info.path, AttestStatus.ALREADY, message, evidence, index), None
        return None, sign_attestation(attestation, self.signing_key)

    def _attestation(self, plan: Plan, evidence: Evidence) -> Attestation:
        info = plan.info
        if info.nar_size is None:
            raise _Refused(f"{info.path}: the Guix database has no NarSize for it", Refusal.NO_SIZE)
        item = self.index.get(hash_part_of(info.path))
        if item is None or not item.is_baked or item.chunk_root is None:
            raise _Refused(
                f"{info.path} is not in this node's cache yet; bake it first "
                f"(p2pcache publish {info.path})",
                Refusal.NOT_BAKED,
            )
        if item.nar_hash != format_nar_hash(info.nar_sha256) or item.nar_size != info.nar_size:
            raise _Refused(
                f"{info.path}: the cached NAR ({item.nar_hash}) is not the one the Guix database "
                f"records ({format_nar_hash(info.nar_sha256)}); not attested",
                Refusal.HASH_MISMATCH,
            )
        system = self._system(plan.built_by or info.deriver)
        if system is None:
            raise _Refused(
                f"{info.path}: cannot tell the system it was built for (its derivation is not "
                "readable in the store)",
                Refusal.NO_SYSTEM,
            )
        return Attestation(
            builder=self.builder_log.public_key,
            store_path=info.path,
            nar_hash=info.nar_sha256,
            nar_size=info.nar_size,
            references=tuple(_basename(r) for r in info.references),
            deriver=_basename(info.deriver) if info.deriver else None,
            system=system,
            time=int(self.now()),
            chunk_root=item.chunk_root,
            evidence=evidence,
        )

    def _system(self, drv: str | None) -> str | None:
        """The system of a derivation, read from its .drv in the store (cached per run)."""
        if drv is None:
            return None
        if drv not in self._systems:
            path = self.settings.store_root / _basename(drv)
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_DERIVATION_SIZE + 1)
                self._systems[drv] = parse_derivation_system(data)
            except (OSError, P2PCacheError) as e:
                log.warning("cannot read the system of %s: %s", drv, e)
                self._systems[drv] = None
        return self._systems[drv]


class _Refused(P2PCacheError):
    def __init__(self, message: str, refusal: Refusal) -> None:
        super().__init__(message)
        self.refusal = refusal
