"""Evidence `check` over a generated store and its real Guix database.

Guix cannot be installed on this machine: the `guix` run here is a stand-in
(p2pcache/testing/guix_stand_in.py) that answers as Guix documents `guix build --check` does
(exit 0 reproduced; exit 1 and "may not be deterministic" when an output differs; exit 1 on
any other error). The real `guix build --check` is not run by these tests. What they show is
what p2pcache makes of each answer, that it reads the database again after the rebuild, and
that rebuilds run one at a time.
"""

import itertools

import pytest

from p2pcache.guix.store_db import GuixStoreDatabase
from p2pcache.testing.guix_stand_in import stand_in_calls, write_guix_stand_in
from p2pcache.trust.attestation import Evidence
from p2pcache.trust.attester import AttestOutcome, AttestStatus, Plan, Refusal
from p2pcache.trust.check_evidence import CheckEvidence, CheckSettings


def basename(path):
    return path.rsplit("/", 1)[-1]


class Checks:
    def __init__(self, store, db, bin_dir):
        self.store = store
        self.db = db
        self.bin_dir = bin_dir
        self.relayed = []
        self.announced = []
        self.guix = None

    def built(self):
        """One built output per derivation (the stand-in answers per derivation)."""
        first = {}
        for info in self.store.items:
            if info.deriver is not None:
                first.setdefault(info.deriver, info)
        return list(first.values())

    def stand_in(self, modes):
        """modes: item -> stand-in mode, for the item's deriver."""
        items = {basename(i.deriver): {"mode": m, "output": i.path} for i, m in modes.items()}
        self.guix = write_guix_stand_in(self.bin_dir, items, self.store.db_path)
        return self.guix

    def checker(self, timeout=30.0):
        settings = CheckSettings(str(self.guix), timeout)
        return CheckEvidence(
            settings, self.db, relay=self.relayed.append, announce=self.announced.append
        )


@pytest.fixture
async def checks(tmp_path, small_test_store):
    db = GuixStoreDatabase(small_test_store.db_path, store_dir=small_test_store.store_dir)
    await db.open()
    yield Checks(small_test_store, db, tmp_path / "bin")
    await db.close()


async def test_a_reproduced_item_is_planned_with_evidence_check(checks):
    info = checks.built()[0]
    checks.stand_in({info: "reproduce"})
    plan = await checks.checker().plan(info)
    assert isinstance(plan, Plan)
    assert plan.evidence is Evidence.CHECK and plan.built_by == info.deriver
    assert plan.info == info
    (call,) = stand_in_calls(checks.guix)
    assert call["args"][-1] == info.deriver and "--check" in call["args"]
    assert f"building {info.deriver}..." in checks.relayed
    assert checks.announced[0].startswith(f"checking 1/1: {info.path} by rebuilding")
    assert checks.announced[1].startswith(f"checked 1/1: {info.path}: reproduced in ")


@pytest.mark.parametrize(
    ("mode", "refusal", "words"),
    [
        ("differ", Refusal.NOT_REPRODUCED, "gave different bits"),
        ("fail", Refusal.CHECK_FAILED, "failed (guix build --check: exit status 1"),
    ],
)
async def test_a_rebuild_that_did_not_reproduce_is_a_refusal(checks, mode, refusal, words):
    info = checks.built()[0]
    checks.stand_in({info: mode})
    outcome = await checks.checker().plan(info)
    assert isinstance(outcome, AttestOutcome)
    assert outcome.status is AttestStatus.REFUSED and outcome.refusal is refusal
    assert outcome.message.startswith(f"{info.path} not attested: ") and words in outcome.message
    assert info.deriver in outcome.message


async def test_a_rebuild_past_its_time_is_a_refusal(checks):
    info = checks.built()[0]
    checks.stand_in({info: "hang"})
    outcome = await checks.checker(timeout=1.0).plan(info)
    assert outcome.refusal is Refusal.CHECK_TIMED_OUT
    assert "took too long" in outcome.message and "--check-timeout" in outcome.message


async def test_the_database_is_read_again_after_the_rebuild(checks):
    """A check leaves the store as it was; a NarHash that changed meanwhile is refused."""
    info = checks.built()[0]
    checks.stand_in({info: "rewrite-db"})
    outcome = await checks.checker().plan(info)
    assert outcome.refusal is Refusal.HASH_CHANGED
    assert "changed while it was rebuilt" in outcome.message
    assert (await checks.db.get(info.path)).nar_sha256 == bytes.fromhex("ab" * 32)


async def test_an_item_without_a_derivation_is_refused_without_running_guix(checks):
    info = next(i for i in checks.store.items if i.deriver is None)
    checks.stand_in({})
    outcome = await checks.checker().plan(info)
    assert outcome.refusal is Refusal.NO_DERIVATION
    assert stand_in_calls(checks.guix) == []


async def test_rebuilds_run_one_at_a_time_in_order(checks):
    infos = checks.built()[:3]
    checks.stand_in(dict(zip(infos, ["reproduce", "differ", "reproduce"], strict=True)))
    results = await checks.checker().plan_all(infos)
    assert [isinstance(r, Plan) for r in results] == [True, False, True]
    assert results[1].refusal is Refusal.NOT_REPRODUCED
    calls = stand_in_calls(checks.guix)
    assert [c["args"][-1] for c in calls] == [i.deriver for i in infos]
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(calls))
    assert [a.split(":")[0] for a in checks.announced] == [
        "checking 1/3", "checked 1/3", "checking 2/3", "checked 2/3", "checking 3/3",
        "checked 3/3",
    ]  # fmt: skip
