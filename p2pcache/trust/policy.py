"""The trust policy: may this item be accepted, on whose word, and why not.

Pure: the operator's policy, what the narinfo claims and what trusted builders attest go in;
a `Decision` with its reasons comes out. Verifying bundles (signatures, inclusion proofs,
checkpoint consistency) happens before (trust/attestation_verifier.py): what reaches `decide`
is the statements of trusted builders that passed every check the policy requires, and the
refusals of everything else, so that a refused item can say why.

Modes (DESIGN.md "The trust model", issue 4 of 5):

* `either` (the default): a narinfo signed by a key in the node's Guix ACL, or a quorum of
  trusted builders. With no builder configured this is exactly the upstream rule.
* `upstream`: the Guix ACL signature alone; attestations are not even gathered.
* `quorum`: `quorum` distinct trusted builders attest the same item; upstream signatures
  are ignored.
* `both`: a reproducibility check; the upstream-signed narinfo is taken only when a quorum
  of independent builders agrees with it.

An attestation made with `--force` (Evidence `forced`: no sign that the builder built the item
itself) does not count towards the quorum unless `accept_forced` is set; it still counts as
a conflict when it contradicts the narinfo.

Whatever the mode (except `upstream`), a trusted builder whose verified statement contradicts
the narinfo refuses the item: another NarHash is a **conflict** (recorded, shown by
`p2pcache challenge`); another NarSize or other References mean the narinfo does not
describe what the builder built. A builder is one vote however many statements it makes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from p2pcache.guix.narinfo import format_nar_hash
from p2pcache.trust.attestation import Attestation

DEFAULT_QUORUM = 2
MAX_QUORUM = 64
MAX_WITNESSES_REQUIRED = 32


class Mode(enum.StrEnum):
    EITHER = "either"
    UPSTREAM = "upstream"
    QUORUM = "quorum"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A builder or witness the operator trusts: a name for people, an Ed25519 key for checks."""

    name: str
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

    @property
    def short(self) -> str:
        return f"{self.name} ({self.key.hex()[:16]}…)"


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    mode: Mode = Mode.EITHER
    quorum: int = DEFAULT_QUORUM
    require_log_proofs: bool = True
    witnesses_required: int = 0
    accept_forced: bool = False
    """Count attestations whose Evidence is `forced` (no build log, no check rebuild)? A
    builder that only substituted an item would merely echo its source: off by default."""
    builders: tuple[TrustedKey, ...] = ()
    witnesses: tuple[TrustedKey, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= MAX_QUORUM:
            raise ValueError(f"quorum must be from 1 to {MAX_QUORUM}, not {self.quorum}")
        if not 0 <= self.witnesses_required <= MAX_WITNESSES_REQUIRED:
            raise ValueError(f"witnesses_required {self.witnesses_required} is out of range")

    @property
    def needs_attestations(self) -> bool:
        """Is there any point gathering attestations for an item?

        Not in `upstream` mode, and not in `either` mode without trusted builders (then the
        node behaves exactly as before attestations existed: no extra request per miss).
        """
        if self.mode is Mode.UPSTREAM:
            return False
        return self.mode is not Mode.EITHER or bool(self.builders)

    def problems(self) -> list[str]:
        """Settings under which nothing can ever be accepted on builders' word (for the log)."""
        found = []
        if self.mode in (Mode.QUORUM, Mode.BOTH) and len(self.builders) < self.quorum:
            found.append(
                f"mode {self.mode} needs {self.quorum} trusted builders, the trust file names "
                f"{len(self.builders)}"
            )
        if self.witnesses_required > len({w.key for w in self.witnesses}):
            found.append(
                f"{self.witnesses_required} witness cosignatures are required, the trust file "
                f"names {len(self.witnesses)} witnesses"
            )
        return found

    def builder(self, key: bytes) -> TrustedKey | None:
        return next((b for b in self.builders if b.key == key), None)


@dataclass(frozen=True, slots=True)
class ItemClaim:
    """What a candidate narinfo says about an item, and whether a Guix ACL key signed it."""

    store_path: str
    nar_hash: bytes
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None
    upstream_signed: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(sorted(set(self.references))))


@dataclass(frozen=True, slots=True)
class Statement:
    """A trusted builder's attestation that passed every check the policy requires."""

    builder: TrustedKey
    attestation: Attestation
    logged: bool
    """Proven included in the builder's log under a checkpoint consistent with those seen."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A piece of evidence that does not count, with the stable reason (attestation.md §8)."""

    reason: str
    detail: str
    builder: bytes | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A trusted builder attests another NarHash for the store path than the narinfo does."""

    store_path: str
    builder: TrustedKey
    attested_nar_hash: bytes
    claimed_nar_hash: bytes

    def describe(self) -> str:
        return (
            f"builder {self.builder.short} attests {format_nar_hash(self.attested_nar_hash)} "
            f"for {self.store_path}, the narinfo says {format_nar_hash(self.claimed_nar_hash)}"
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether the item may be accepted, on what basis, and every reason that mattered.

    `reasons[0]` is the reason for the outcome (a stable word used in metrics), the rest are
    the refusals and mismatches met on the way. `basis`: `upstream`, `quorum` or `both` when
    accepted; `chunk_root` is the one the agreeing builders attested (None without them), so
    every chunk can be checked against builder-signed data.
    """

    accepted: bool
    reasons: tuple[str, ...]
    agreeing: tuple[TrustedKey, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    basis: str | None = None
    chunk_root: bytes | None = None
    details: tuple[str, ...] = field(default=(), compare=False)

    @property
    def reason(self) -> str:
        return self.reasons[0]

    @property
    def outcome(self) -> str:
        return "accepted" if self.accepted else "refused"

    def explain(self) -> str:
        """One sentence for the log."""
        head = "accepted" if self.accepted else "refused"
        who = ", ".join(b.name for b in self.agreeing) or "no trusted builder"
        text = f"{head} ({self.reason}); agreeing: {who}"
        if self.details:
            text += "; " + "; ".join(self.details[:4])
        return text


def decide(
    policy: TrustPolicy,
    claim: ItemClaim,
    statements: Iterable[Statement] = (),
    refusals: Sequence[Refusal] = (),
) -> Decision:
    """Judge `claim` under `policy` given the verified statements of trusted builders.

    Statements by keys the policy does not trust, or about another store path, are not
    counted (the verifier never produces them; checked again here because the price is nil).
    """
    if policy.mode is Mode.UPSTREAM:
        if claim.upstream_signed:
            return Decision(True, ("upstream-signature",), basis="upstream")
        return Decision(False, ("no-upstream-signature",))
    refusals = list(refusals)
    by_builder: dict[bytes, list[Statement]] = {}
    for statement in statements:
        key = statement.builder.key
        if policy.builder(key) is None:
            refusals.append(Refusal("untrusted-key", "not a trusted builder", key))
        elif statement.attestation.store_path != claim.store_path:
            refusals.append(Refusal("wrong-store-path", statement.attestation.store_path, key))
        elif (statement.logged or not policy.require_log_proofs) and statement not in (
            by_builder.get(key, [])
        ):
            by_builder.setdefault(key, []).append(statement)

    conflicts: list[Conflict] = []
    mismatches: list[str] = []
    details: list[str] = []
    agreeing: list[TrustedKey] = []
    chunk_roots: set[bytes] = set()
    for said in by_builder.values():
        builder = said[0].builder
        agrees = True
        for statement in said:
            a = statement.attestation
            if a.nar_hash != claim.nar_hash:
                conflict = Conflict(claim.store_path, builder, a.nar_hash, claim.nar_hash)
                conflicts.append(conflict)
                details.append(conflict.describe())
                agrees = False
            elif a.nar_size != claim.nar_size:
                mismatches.append("nar-size-mismatch")
                details.append(f"{builder.short} attests NarSize {a.nar_size}")
                agrees = False
            elif a.references != claim.references:
                mismatches.append("references-mismatch")
                details.append(f"{builder.short} attests other references")
                agrees = False
            elif claim.deriver is not None and a.deriver not in (None, claim.deriver):
                refusals.append(Refusal("deriver-mismatch", a.deriver or "", builder.key))
                details.append(f"{builder.short} attests deriver {a.deriver}")
                agrees = False
            elif a.evidence.is_forced and not policy.accept_forced:
                refusals.append(Refusal("forced-evidence", "attested with --force", builder.key))
                details.append(f"{builder.short} attests without evidence of a build (forced)")
                agrees = False
            else:
                chunk_roots.add(a.chunk_root)
        if agrees:
            agreeing.append(builder)
    if len(chunk_roots) > 1:
        mismatches.append("chunk-root-mismatch")
        details.append("trusted builders attest different chunk roots for one NarHash")
    agreeing.sort(key=lambda b: b.name)
    chunk_root = next(iter(chunk_roots)) if len(chunk_roots) == 1 else None
    common = {
        "agreeing": tuple(agreeing),
        "conflicts": tuple(conflicts),
        "refusals": tuple(refusals),
        "details": tuple(details),
    }
    extra = tuple(dict.fromkeys(r.reason for r in refusals))
    if conflicts or mismatches:
        first = "conflict" if conflicts else mismatches[0]
        return Decision(False, (first, *dict.fromkeys(mismatches), *extra), **common)
    quorum_met = len(agreeing) >= policy.quorum
    if not quorum_met:
        common["details"] = (
            f"{len(agreeing)} of {policy.quorum} trusted builders agree",
            *common["details"],
        )
    if policy.mode is Mode.EITHER and claim.upstream_signed:
        return Decision(
            True, ("upstream-signature", *extra), basis="upstream", chunk_root=chunk_root, **common
        )
    if policy.mode is Mode.BOTH and not claim.upstream_signed:
        return Decision(False, ("no-upstream-signature", *extra), **common)
    if not quorum_met:
        return Decision(False, ("quorum-not-met", *extra), **common)
    basis = "both" if policy.mode is Mode.BOTH else "quorum"
    return Decision(True, ("quorum", *extra), basis=basis, chunk_root=chunk_root, **common)
