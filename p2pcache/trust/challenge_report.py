"""What each trusted builder attests for one store path, and whether they all agree.

The data behind `p2pcache challenge` (like `guix challenge`, but from signed attestations
instead of substitute servers' narinfos): per trusted builder, its verified statement, or
why what was offered for it does not count, or that nothing was offered. A conflict is two
verified statements (or a statement and the node's own copy) that describe the item
differently: another NarHash, NarSize, references or chunk root.

Pure: verified statements in, a report (and its JSON form for the admin API) out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2pcache.guix.narinfo import format_nar_hash
from p2pcache.trust.attestation import Attestation
from p2pcache.trust.policy import Refusal, Statement, TrustedKey


@dataclass(frozen=True, slots=True)
class LocalCopy:
    """The item as this node holds it (its cache index or the local store)."""

    nar_hash: bytes
    nar_size: int
    references: tuple[str, ...]
    origin: str


def describe(a: Attestation) -> tuple:
    """What must be equal for two statements to agree."""
    return (a.nar_hash, a.nar_size, a.references, a.chunk_root)


def challenge_report(
    store_path: str,
    builders: Sequence[TrustedKey],
    statements: Sequence[Statement],
    refusals: Sequence[Refusal] = (),
    local: LocalCopy | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready mapping; `conflict` is true when descriptions differ."""
    by_key: dict[bytes, list[Attestation]] = {}
    for s in statements:
        if s.attestation.store_path == store_path:
            said = by_key.setdefault(s.builder.key, [])
            if s.attestation not in said:
                said.append(s.attestation)
    refused: dict[bytes, list[Refusal]] = {}
    for r in refusals:
        if r.builder is not None:
            refused.setdefault(r.builder, []).append(r)
    entries = []
    descriptions: set[tuple] = set()
    hashes: set[bytes] = set()
    for builder in builders:
        said = by_key.get(builder.key, [])
        for a in said:
            descriptions.add(describe(a))
            hashes.add(a.nar_hash)
        entries.append(
            {
                "name": builder.name,
                "key": builder.key.hex(),
                "attestations": [_statement_json(a) for a in said],
                "refused": [
                    {"reason": r.reason, "detail": r.detail} for r in refused.get(builder.key, [])
                ],
            }
        )
    if local is not None:
        hashes.add(local.nar_hash)
    sizes_or_refs_differ = len({d[:3] for d in descriptions}) > 1 or (
        local is not None
        and any(
            d[:3] != (local.nar_hash, local.nar_size, tuple(sorted(local.references)))
            for d in descriptions
        )
    )
    conflict = len(hashes) > 1 or sizes_or_refs_differ or len(descriptions) > 1
    attested = sum(1 for e in entries if e["attestations"])
    return {
        "store_path": store_path,
        "local": None
        if local is None
        else {
            "nar_hash": format_nar_hash(local.nar_hash),
            "nar_size": local.nar_size,
            "references": list(local.references),
            "origin": local.origin,
        },
        "builders": entries,
        "untrusted": [
            {"reason": r.reason, "detail": r.detail} for r in refusals if r.builder is None
        ]
        + [
            {"reason": r.reason, "detail": r.detail}
            for r in refusals
            if r.builder is not None and r.builder not in {b.key for b in builders}
        ],
        "attested_by": attested,
        "conflict": conflict,
        "verdict": "conflict" if conflict else ("agree" if attested else "no-attestation"),
    }


def _statement_json(a: Attestation) -> dict[str, Any]:
    return {
        "nar_hash": format_nar_hash(a.nar_hash),
        "nar_size": a.nar_size,
        "references": list(a.references),
        "deriver": a.deriver,
        "system": a.system,
        "time": a.time,
        "chunk_root": a.chunk_root.hex(),
        "evidence": a.evidence.value,
    }
