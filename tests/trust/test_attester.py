"""The attester over a generated store, a real cache and log: evidence, facts, idempotence."""

import pytest

from p2pcache.guix.narinfo import format_nar_hash
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.guix.store_db import GuixStoreDatabase
from p2pcache.net.identity import NodeIdentity
from p2pcache.testing.build_logs import write_build_log
from p2pcache.testing.guix_db_writer import open_for_writing
from p2pcache.trust.attestation import Evidence, parse_attestation, verify_attestation
from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.attester import (
    Attester,
    AttestSettings,
    AttestStatus,
    Refusal,
    adds_nothing,
)
from p2pcache.trust.builder_log import BuilderLog, hash_part_of
from p2pcache.trust.checkpoint import verify_checkpoint
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_proof import verify_inclusion
from tests.seeded_cache import seed_cache
from tests.trust.builders import builder_key, signed_attestation, store_path

NOW = 1_795_000_000


class Harness:
    def __init__(self, store, cache, db, builder_log, identity, log_dir):
        self.store = store
        self.cache = cache
        self.db = db
        self.builder_log = builder_log
        self.identity = identity
        self.log_dir = log_dir
        self.clock = NOW
        self.attester = self.new_attester()

    def new_attester(self):
        settings = AttestSettings(self.store.store_dir, self.store.store_root, self.log_dir)
        return Attester(
            settings,
            self.db,
            self.cache.index,
            self.builder_log,
            self.identity.signing_key,
            now=lambda: self.clock,
        )

    def built(self):
        """The outputs of derivations (the items a build can produce)."""
        return [i for i in self.store.items if i.deriver is not None]

    def mark_built(self, info, suffix=".bz2"):
        write_build_log(self.log_dir, info.deriver, suffix=suffix)

    async def attest(self, infos, force=False):
        plans = [await self.attester.plan(info) for info in infos]
        return self.attester.attest(plans, force=force)


@pytest.fixture
async def harness(tmp_path, small_test_store):
    cache = await seed_cache(
        tmp_path / "data", small_test_store, generate_key_pair(), small_test_store.items
    )
    identity = NodeIdentity.generate()
    db = GuixStoreDatabase(small_test_store.db_path, store_dir=small_test_store.store_dir)
    await db.open()
    with BuilderLog.open(tmp_path / "data", identity.signing_key) as builder_log:
        yield Harness(small_test_store, cache, db, builder_log, identity, tmp_path / "logs")
    await db.close()
    await cache.index.close()


async def test_a_built_item_is_attested_with_the_daemons_facts_and_logged(harness):
    info = harness.built()[0]
    harness.mark_built(info)
    (outcome,) = await harness.attest([info])
    assert outcome.status is AttestStatus.ATTESTED and outcome.index == 0
    assert outcome.evidence is Evidence.BUILD_LOG
    signed = parse_attestation(harness.builder_log.log.leaf(0))
    a = verify_attestation(signed, harness.identity.public_key)
    cached = harness.cache.index.get(hash_part_of(info.path))
    assert a.store_path == info.path
    assert a.nar_hash == info.nar_sha256 and a.nar_size == info.nar_size
    assert a.references == tuple(sorted(r.rsplit("/", 1)[-1] for r in info.references))
    assert a.deriver == info.deriver.rsplit("/", 1)[-1]
    assert a.system == "x86_64-linux"  # read from the .drv the generator wrote
    assert a.chunk_root == cached.chunk_root and a.time == NOW
    # A checkpoint covers it and the inclusion proof from storage verifies against it.
    checkpoint = verify_checkpoint(
        harness.builder_log.bundles.latest_own_checkpoint().note, harness.identity.public_key
    )
    assert checkpoint.size == 1
    proof = harness.builder_log.inclusion_proof(0, 1)
    verify_inclusion(0, 1, leaf_hash(signed.render()), proof, checkpoint.root)
    bundle = parse_bundle(harness.builder_log.own_bundle(hash_part_of(info.path)))
    verify_bundle(bundle, harness.identity.public_key, info.path)


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ""])
async def test_every_log_form_guix_keeps_is_evidence(harness, suffix):
    info = harness.built()[1]
    harness.mark_built(info, suffix)
    (outcome,) = await harness.attest([info])
    assert outcome.evidence is Evidence.BUILD_LOG


async def test_an_item_without_a_build_log_is_refused_and_nothing_is_logged(harness):
    info = harness.built()[0]
    (outcome,) = await harness.attest([info])
    assert outcome.status is AttestStatus.REFUSED and outcome.refusal is Refusal.NO_BUILD_LOG
    assert "substituted" in outcome.message and "--force" in outcome.message
    assert info.deriver.rsplit("/", 1)[-1] in outcome.message
    assert harness.builder_log.size == 0
    assert harness.builder_log.bundles.latest_own_checkpoint() is None


async def test_force_attests_it_marked_forced(harness):
    info = harness.built()[0]
    (outcome,) = await harness.attest([info], force=True)
    assert outcome.status is AttestStatus.ATTESTED and outcome.evidence is Evidence.FORCED
    assert parse_attestation(harness.builder_log.log.leaf(0)).attestation.evidence.is_forced


async def test_substituted_items_are_never_attested_while_built_ones_are(harness):
    built, substituted = harness.built()[:2], harness.built()[2:]
    for info in built:
        harness.mark_built(info)
    # A log of another derivation (a sibling package) must not vouch for these.
    plans = [await harness.attester.plan(info) for info in harness.store.items]
    with_evidence = {p.info.path for p in plans if p.evidence is not None}
    same_drv = {i.path for i in substituted if i.deriver in {b.deriver for b in built}}
    assert with_evidence == {i.path for i in built} | same_drv
    outcomes = harness.attester.attest(plans)
    attested = {o.store_path for o in outcomes if o.status is AttestStatus.ATTESTED}
    assert attested == with_evidence
    refused = [o for o in outcomes if o.status is AttestStatus.REFUSED]
    assert len(refused) == len(harness.store.items) - len(attested)
    assert all(o.refusal is Refusal.NO_BUILD_LOG for o in refused)
    assert harness.builder_log.size == len(attested)


async def test_attesting_again_appends_nothing(harness):
    info = harness.built()[0]
    harness.mark_built(info)
    await harness.attest([info])
    note = harness.builder_log.bundles.latest_own_checkpoint().note
    harness.clock += 3600  # a later run: only the time would differ
    (again,) = await harness.attest([info])
    assert again.status is AttestStatus.ALREADY and again.index == 0
    assert harness.builder_log.size == 1
    assert harness.builder_log.bundles.latest_own_checkpoint().note == note


async def test_a_build_log_found_later_upgrades_a_forced_attestation_once(harness):
    info = harness.built()[0]
    await harness.attest([info], force=True)
    harness.mark_built(info)
    (upgraded,) = await harness.attest([info], force=True)
    assert upgraded.status is AttestStatus.ATTESTED and upgraded.evidence is Evidence.BUILD_LOG
    assert upgraded.index == 1
    (again,) = await harness.attest([info], force=True)
    assert again.status is AttestStatus.ALREADY
    bundle = parse_bundle(harness.builder_log.own_bundle(hash_part_of(info.path)))
    assert bundle.index == 1 and bundle.attestation.attestation.evidence is Evidence.BUILD_LOG


async def test_a_deriver_missing_from_the_row_is_found_among_the_valid_derivers(harness):
    info = harness.built()[0]
    harness.mark_built(info)
    with open_for_writing(harness.store.db_path) as conn:
        conn.execute("UPDATE ValidPaths SET deriver = NULL WHERE path = ?", (info.path,))
    refreshed = await harness.db.get(info.path)
    assert refreshed.deriver is None
    plan = await harness.attester.plan(refreshed)
    assert plan.evidence is Evidence.BUILD_LOG and plan.built_by == info.deriver
    (outcome,) = harness.attester.attest([plan])
    assert outcome.status is AttestStatus.ATTESTED
    attestation = parse_attestation(harness.builder_log.log.leaf(0)).attestation
    assert attestation.deriver is None and attestation.system == "x86_64-linux"


async def test_an_item_not_in_the_cache_is_refused_with_what_to_do(harness):
    info = harness.built()[0]
    harness.mark_built(info)
    await harness.cache.index.mark_unbaked(hash_part_of(info.path))
    (outcome,) = await harness.attest([info])
    assert outcome.refusal is Refusal.NOT_BAKED and "p2pcache publish" in outcome.message
    assert harness.builder_log.size == 0


async def test_a_cached_nar_other_than_the_recorded_one_is_refused(harness):
    info = harness.built()[0]
    harness.mark_built(info)
    with open_for_writing(harness.store.db_path) as conn:
        conn.execute(
            "UPDATE ValidPaths SET hash = ? WHERE path = ?", ("sha256:" + "ab" * 32, info.path)
        )
    (outcome,) = await harness.attest([await harness.db.get(info.path)])
    assert outcome.refusal is Refusal.HASH_MISMATCH
    assert format_nar_hash(bytes.fromhex("ab" * 32)) in outcome.message
    assert harness.builder_log.size == 0


async def test_an_unreadable_derivation_leaves_the_system_unknown_and_the_item_refused(harness):
    info = harness.built()[0]
    harness.mark_built(info)
    drv_file = harness.store.real_path(info.deriver)
    drv_file.parent.chmod(0o755)
    drv_file.chmod(0o644)
    drv_file.write_bytes(b"not a derivation")
    (outcome,) = await harness.attest([info])
    assert outcome.refusal is Refusal.NO_SYSTEM
    assert harness.builder_log.size == 0


def test_only_better_evidence_makes_a_repeat_worth_logging():
    key = builder_key("b")
    forced = signed_attestation(key, store_path(1), evidence=Evidence.FORCED).attestation
    built = signed_attestation(key, store_path(1), time=1).attestation
    other = signed_attestation(key, store_path(1), nar_hash=b"\1" * 32).attestation
    assert adds_nothing(built, forced) and adds_nothing(forced, forced)
    assert not adds_nothing(forced, built)
    assert not adds_nothing(built, other)
