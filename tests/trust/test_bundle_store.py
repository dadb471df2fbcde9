"""The bundle store: own entries filed in log order, own checkpoints, carried bundles bounded."""

import pytest

from p2pcache.trust.attestation_bundle import parse_bundle
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.bundle_store import MAX_CARRIED_PER_ITEM, BundleStore, BundleStoreError
from p2pcache.trust.checkpoint import cosign_checkpoint, verify_checkpoint
from p2pcache.trust.cosignature import Cosigner
from tests.trust.builders import builder_key, hash_part, signed_attestation, store_path

PATH = store_path(7)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def store(tmp_path):
    with BundleStore(tmp_path / "bundles.sqlite", now=Clock()) as s:
        yield s


def bundle_of(tmp_path, label: str, path: str = PATH, entries: int = 1):
    """A real bundle from builder `label`'s own log, `entries` attestations of `path` deep."""
    key = builder_key(label)
    with BuilderLog.open(tmp_path / label, key) as log:
        for n in range(entries):
            log.append([signed_attestation(key, path, time=1_790_000_000 + n)])
        log.checkpoint()
        return parse_bundle(log.own_bundle(hash_part(path)))


def test_own_entries_are_filed_in_log_order_only(store):
    store.record_own(0, ["a" * 32, "b" * 32, "a" * 32])
    assert store.indexed_size == 3
    assert store.own_indexes("a" * 32) == [0, 2]
    assert store.own_count() == 2
    with pytest.raises(BundleStoreError):
        store.record_own(1, ["c" * 32])  # leaves 1.. are filed already
    with pytest.raises(BundleStoreError):
        store.record_own(5, ["c" * 32])  # leaves 3, 4 would be skipped
    assert store.indexed_size == 3


def test_the_latest_own_checkpoint_is_the_largest_tree(tmp_path, store):
    key = builder_key("own")
    with BuilderLog.open(tmp_path / "own", key) as log:
        notes = []
        for n in range(3):
            log.append([signed_attestation(key, store_path(n))])
            notes.append(log.log.checkpoint(key))
    assert store.latest_own_checkpoint() is None
    for note in (notes[0], notes[2], notes[1]):
        store.record_own_checkpoint(note)
    latest = store.latest_own_checkpoint()
    assert (latest.size, latest.note) == (3, notes[2])
    assert store.own_checkpoint(1).note == notes[0]
    assert store.own_checkpoint(4) is None


def test_carried_bundles_are_kept_per_builder_the_largest_tree_winning(tmp_path, store):
    small = bundle_of(tmp_path / "1", "builder b", entries=1)
    large = bundle_of(tmp_path / "2", "builder b", entries=3)
    other = bundle_of(tmp_path, "builder c")
    assert store.add_carried(hash_part(PATH), small)
    assert store.add_carried(hash_part(PATH), other)
    assert store.add_carried(hash_part(PATH), large)
    assert not store.add_carried(hash_part(PATH), small)  # an older view never replaces
    carried = [parse_bundle(b) for b in store.carried(hash_part(PATH))]
    assert carried == [large, other]  # most recently received first
    assert store.carried(hash_part(store_path(8))) == []


def test_a_bundle_is_never_filed_under_another_item(tmp_path, store):
    with pytest.raises(BundleStoreError, match="cannot be carried"):
        store.add_carried(hash_part(store_path(8)), bundle_of(tmp_path, "builder b"))
    assert store.carried(hash_part(store_path(8))) == []


def test_carried_bundles_per_item_are_bounded_the_least_recent_going_first(tmp_path, store):
    bundles = [bundle_of(tmp_path, f"builder {n}") for n in range(MAX_CARRIED_PER_ITEM + 3)]
    for bundle in bundles:
        store.add_carried(hash_part(PATH), bundle)
    kept = [parse_bundle(b) for b in store.carried(hash_part(PATH))]
    assert len(kept) == MAX_CARRIED_PER_ITEM
    assert kept == list(reversed(bundles[3:]))


def test_forgetting_an_item_drops_its_carried_bundles(tmp_path, store):
    store.add_carried(hash_part(PATH), bundle_of(tmp_path, "builder b"))
    store.forget_carried([hash_part(PATH)])
    assert store.carried(hash_part(PATH)) == []


def test_an_own_checkpoint_takes_more_signature_lines_but_never_another_text(tmp_path):
    key = builder_key("builder a")
    with BuilderLog.open(tmp_path / "a", key) as log:
        log.append([signed_attestation(key, store_path(n)) for n in range(3)])
        signed = log.checkpoint()
        witness = Cosigner("w.example/w", builder_key("w"))
        cosigned = cosign_checkpoint(verify_checkpoint(signed.note, log.public_key), witness, 7)
        log.bundles.replace_own_checkpoint_note(3, cosigned)
        assert log.checkpoint().note == cosigned  # served, and put into own bundles, as it is
        log.append([signed_attestation(key, store_path(9))])
        later = log.checkpoint().note
        with pytest.raises(BundleStoreError, match="another text"):
            log.bundles.replace_own_checkpoint_note(3, later)
        with pytest.raises(BundleStoreError, match="no checkpoint of size"):
            log.bundles.replace_own_checkpoint_note(2, cosigned)
