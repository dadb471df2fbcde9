"""A builder's own log: appends filed by item, checkpoints signed once per size, fresh bundles."""

import pytest

from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.checkpoint import verify_checkpoint
from p2pcache.trust.checkpoint_store import CheckpointStore, Outcome
from p2pcache.trust.merkle_log import LogCorruptError, MerkleLog
from p2pcache.trust.merkle_proof import verify_consistency
from tests.trust.builders import builder_key, hash_part, signed_attestation, store_path

KEY = builder_key("builder a")
PUBLIC = bytes(KEY.verify_key)


@pytest.fixture
def builder_log(tmp_path):
    with BuilderLog.open(tmp_path, KEY) as log:
        yield log


def test_an_empty_log_has_no_checkpoint_and_no_bundles(builder_log):
    assert builder_log.checkpoint() is None
    assert builder_log.own_bundle(hash_part(store_path(1))) is None


def test_appended_attestations_are_filed_and_bundled_against_the_newest_checkpoint(builder_log):
    paths = [store_path(i) for i in range(5)]
    builder_log.append([signed_attestation(KEY, p) for p in paths[:3]])
    # Appended but not yet covered by a checkpoint: no bundle can prove it yet.
    assert builder_log.own_bundle(hash_part(paths[0])) is None
    first = builder_log.checkpoint()
    assert first.size == 3
    builder_log.append([signed_attestation(KEY, p) for p in paths[3:]])
    second = builder_log.checkpoint()
    assert second.size == 5
    verify_checkpoint(second.note, PUBLIC)
    for n, path in enumerate(paths):
        bundle = parse_bundle(builder_log.own_bundle(hash_part(path)))
        verified = verify_bundle(bundle, PUBLIC, path)
        assert verified.index == n
        assert verified.checkpoint.size == 5  # refreshed: proven against the newest one
    old_root = verify_checkpoint(first.note, PUBLIC).root
    new_root = verify_checkpoint(second.note, PUBLIC).root
    verify_consistency(3, 5, builder_log.consistency_proof(3, 5), old_root, new_root)


def test_a_checkpoint_is_signed_once_per_size_and_is_the_same_bytes_every_time(tmp_path):
    with BuilderLog.open(tmp_path, KEY) as log:
        log.append([signed_attestation(KEY, store_path(1))])
        note = log.checkpoint().note
        assert log.checkpoint().note == note
    with BuilderLog.open(tmp_path, KEY) as reopened:
        assert reopened.checkpoint().note == note
        # A checkpoint made independently of the same tree (another process) is identical.
        assert reopened.log.checkpoint(KEY) == note


def test_own_checkpoints_pass_a_verifiers_consistency_checks(builder_log, tmp_path):
    with CheckpointStore(tmp_path / "seen.sqlite") as seen:
        previous = None
        for round_ in range(4):
            builder_log.append([signed_attestation(KEY, store_path(100 + round_))])
            cp = verify_checkpoint(builder_log.checkpoint().note, PUBLIC)
            if previous is None:
                assert seen.observe(cp).outcome is Outcome.FIRST_SEEN
            else:
                proof = builder_log.consistency_proof(previous, cp.size)
                assert seen.observe(cp, proof).outcome is Outcome.ADVANCED
            previous = cp.size


def test_entries_appended_by_a_run_cut_short_are_filed_on_open(tmp_path):
    with BuilderLog.open(tmp_path, KEY) as log:
        log.append([signed_attestation(KEY, store_path(1))])
        origin = log.origin
    # A run that appended to the log and died before filing (or signing a checkpoint).
    with MerkleLog(tmp_path / "trust" / "log.sqlite", origin) as raw:
        raw.append(signed_attestation(KEY, store_path(2)).render())
    with BuilderLog.open(tmp_path, KEY) as log:
        assert log.bundles.indexed_size == 2
        assert log.bundles.own_indexes(hash_part(store_path(2))) == [1]
        assert log.checkpoint().size == 2
        verify_bundle(parse_bundle(log.own_bundle(hash_part(store_path(2)))), PUBLIC, store_path(2))


def test_only_this_nodes_own_attestations_go_into_its_log(builder_log):
    other = builder_key("someone else")
    with pytest.raises(ValueError):
        builder_log.append([signed_attestation(other, store_path(1))])
    assert builder_log.size == 0


def test_a_log_file_of_another_key_is_not_opened_as_this_ones(tmp_path):
    with BuilderLog.open(tmp_path, KEY):
        pass
    with pytest.raises(Exception, match="belongs to"):
        BuilderLog.open(tmp_path, builder_key("a new identity"))


def test_a_log_holding_something_other_than_attestations_is_refused_as_corrupt(tmp_path):
    with BuilderLog.open(tmp_path, KEY) as log:
        origin = log.origin
    with MerkleLog(tmp_path / "trust" / "log.sqlite", origin) as raw:
        raw.append(b"not an attestation\n")
    with pytest.raises(LogCorruptError):
        BuilderLog.open(tmp_path, KEY)
