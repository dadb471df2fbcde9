"""Evidence `check`: rebuild an item here with `guix build --check` before attesting it.

The Guix database does not say built or substituted, and a missing build log (deleted, or the
item substituted) leaves a builder without evidence. A rebuild here is evidence of its own:
`guix build --check` rebuilds the item's derivation on this machine and the daemon compares
the result with the item in the store (guix/check_build.py). Only an item whose rebuild
reproduced it is planned with evidence `check`; every other outcome is a refusal that says
why (no derivation to rebuild, not reproducible, failed, timed out).

After the rebuild the item's row is read again: its NarHash and NarSize must be the ones read
before. A successful check leaves the store untouched, so a change means something else
rewrote the item meanwhile, and what the rebuild reproduced is not what would be signed.

Checks run one at a time (a rebuild takes the machine's cores), each announced with its
position and bound, its outcome reported with the time it took.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from p2pcache.guix.check_build import (
    CheckResult,
    CheckVerdict,
    check_build_command,
    run_check_build,
)
from p2pcache.guix.store_db import GuixStoreDatabase, StoreItemInfo
from p2pcache.progress import human_duration
from p2pcache.trust.attestation import Evidence
from p2pcache.trust.attester import AttestOutcome, AttestStatus, Plan, Refusal

log = logging.getLogger(__name__)

_REFUSAL = {
    CheckVerdict.DIFFERS: Refusal.NOT_REPRODUCED,
    CheckVerdict.FAILED: Refusal.CHECK_FAILED,
    CheckVerdict.TIMED_OUT: Refusal.CHECK_TIMED_OUT,
}


@dataclass(frozen=True, slots=True)
class CheckSettings:
    guix: str
    """The guix executable (already resolved: guix/check_build.py's resolve_guix)."""
    timeout: float
    """Seconds one rebuild may take."""


class CheckEvidence:
    """Rebuilds named items one at a time and plans those that reproduced with evidence
    `check`; the others become refusals."""

    def __init__(
        self,
        settings: CheckSettings,
        db: GuixStoreDatabase,
        *,
        relay: Callable[[str], None],
        announce: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.db = db
        self.relay = relay
        """Gets every line guix writes on stderr."""
        self.announce = announce
        """Gets one line per item before and after its rebuild (progress)."""

    async def plan_all(self, infos: list[StoreItemInfo]) -> list[Plan | AttestOutcome]:
        """A plan (evidence `check`) or a refusal for each item, in order."""
        results: list[Plan | AttestOutcome] = []
        for number, info in enumerate(infos, 1):
            results.append(await self.plan(info, f"{number}/{len(infos)}"))
        return results

    async def plan(self, info: StoreItemInfo, position: str = "1/1") -> Plan | AttestOutcome:
        drv = await self._derivation(info)
        if drv is None:
            return _refused(
                info,
                "it has no valid derivation to rebuild it from (it was added, or its .drv "
                "was collected)",
                Refusal.NO_DERIVATION,
            )
        command = check_build_command(self.settings.guix, drv, self.settings.timeout)
        self.announce(
            f"checking {position}: {info.path} by rebuilding {drv} "
            f"(at most {human_duration(self.settings.timeout)})"
        )
        result = await run_check_build(command, self.settings.timeout, self.relay)
        took = human_duration(result.seconds)
        self.announce(f"checked {position}: {info.path}: {result.verdict.value} in {took}")
        if result.verdict is not CheckVerdict.REPRODUCED:
            return _refused(info, _why(result, drv), _REFUSAL[result.verdict])
        after = await self.db.get(info.path)
        if after is None or (after.nar_sha256, after.nar_size) != (info.nar_sha256, info.nar_size):
            return _refused(
                info,
                "its NarHash in the Guix database changed while it was rebuilt (or it is no "
                "longer valid): what was checked is not what would be signed",
                Refusal.HASH_CHANGED,
            )
        log.debug("%s: reproduced by rebuilding %s", info.path, drv)
        return Plan(after, Evidence.CHECK, drv)

    async def _derivation(self, info: StoreItemInfo) -> str | None:
        """The derivation to rebuild: the row's deriver if it is valid, else another valid
        deriver of the item (guix build needs the .drv in the store)."""
        derivers = [info.deriver] if info.deriver else []
        derivers += await self.db.valid_derivers(info.path)
        for drv in dict.fromkeys(derivers):
            if await self.db.get(drv) is not None:
                return drv
        return None


def _why(result: CheckResult, drv: str) -> str:
    if result.verdict is CheckVerdict.DIFFERS:
        return f"rebuilding {drv} gave different bits (guix build --check: {result.reason()})"
    if result.verdict is CheckVerdict.TIMED_OUT:
        return f"rebuilding {drv} took too long ({result.reason()}); raise --check-timeout"
    return f"rebuilding {drv} failed (guix build --check: {result.reason()})"


def _refused(info: StoreItemInfo, why: str, refusal: Refusal) -> AttestOutcome:
    return AttestOutcome(
        info.path, AttestStatus.REFUSED, f"{info.path} not attested: {why}", refusal=refusal
    )
