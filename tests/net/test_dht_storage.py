"""ProviderStorage: validated, merged, bounded, expiring by the signed field."""

from __future__ import annotations

import hashlib
import random

import nacl.signing
import pytest

from p2pcache.net.dht_stats import DHTStats
from p2pcache.net.dht_storage import ProviderStorage, StorageLimits
from p2pcache.net.provider_record import (
    MAX_REPLY_RECORDS,
    REPLY_VALUE_BUDGET,
    ProviderRecord,
    decode_value,
    encode_value,
    provider_key,
    sign_record,
)
from tests.net.dht_network import FakeClock

HASH = "0m8k7bvxivqz6wa0vzmal5aiqpl2vz8z"
OTHER_HASH = "1fpp3fmy6dgcfx2ng1rv3b3c9q1alqlw"
KEY = provider_key(HASH)


def signer(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(b"storage signer %d" % i).digest())


def record_value(i: int, clock: FakeClock, *, key=KEY, ttl=3600, issued=None, endpoint=None):
    sk = signer(i)
    issued = int(clock()) if issued is None else issued
    record = ProviderRecord(
        bytes(sk.verify_key), endpoint or f"http://192.0.2.{i % 250}:8081", issued, issued + ttl
    )
    return encode_value([sign_record(key, record, sk)])


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def storage(clock):
    return ProviderStorage(clock=clock, rng=random.Random(1), stats=DHTStats())


def endpoints(storage, key=KEY):
    return sorted(r.record.endpoint for r in storage.records(key))


def test_records_from_several_providers_are_kept_side_by_side(storage, clock):
    for i in range(5):
        assert storage.merge(KEY, record_value(i, clock), "198.51.100.1").is_accepted
    assert len(storage.records(KEY)) == 5
    reply = decode_value(KEY, storage.get(KEY), clock())
    assert len(reply.records) == 5 and not reply.rejected


def test_a_newer_record_of_the_same_node_replaces_the_older(storage, clock):
    storage.merge(KEY, record_value(1, clock, endpoint="http://old:1"), "198.51.100.1")
    clock.advance(10)
    storage.merge(KEY, record_value(1, clock, endpoint="http://new:1"), "198.51.100.1")
    assert endpoints(storage) == ["http://new:1"]
    older = record_value(1, clock, issued=int(clock()) - 100, endpoint="http://older:1")
    outcome = storage.merge(KEY, older, "198.51.100.1")
    assert outcome.unchanged == 1 and outcome.accepted == 0
    assert endpoints(storage) == ["http://new:1"]


def test_records_expire_at_their_signed_time_whatever_is_republished(storage, clock):
    value = record_value(1, clock, ttl=60)
    storage.merge(KEY, value, "198.51.100.1")
    clock.advance(59)
    storage.merge(KEY, value, "198.51.100.2")  # a stock node republishing the same bytes
    assert len(storage.records(KEY)) == 1
    clock.advance(1)
    assert storage.records(KEY) == []
    assert storage.get(KEY) is None
    assert storage.stats.records_expired == 1
    assert storage.merge(KEY, value, "198.51.100.2").rejected == {"expired": 1}


def test_invalid_records_are_refused_and_counted_by_reason(storage, clock):
    good = record_value(1, clock)
    outcome = storage.merge(provider_key(OTHER_HASH), good, "198.51.100.1")
    assert not outcome.is_accepted and outcome.rejected == {"bad_signature": 1}
    assert storage.merge(KEY, b"i overwrite you", "198.51.100.1").rejected == {"malformed": 1}
    long_lived = record_value(2, clock, ttl=86401 - 1)
    assert storage.merge(KEY, long_lived, "198.51.100.1").is_accepted
    assert storage.stats.records_rejected == {"bad_signature": 1, "malformed": 1}
    assert storage.stats.records_stored == 1


def test_a_key_holds_at_most_its_limit_and_the_soonest_expiring_gives_way(clock):
    limits = StorageLimits(max_records_per_key=4, max_records_per_key_per_source=100)
    storage = ProviderStorage(limits, clock=clock)
    for i in range(4):
        storage.merge(KEY, record_value(i, clock, ttl=1000 + i), "198.51.100.1")
    short = storage.merge(KEY, record_value(10, clock, ttl=500), "198.51.100.1")
    assert short.rejected == {"key_full": 1}
    longer = storage.merge(KEY, record_value(11, clock, ttl=5000), "198.51.100.1")
    assert longer.accepted == 1
    assert len(storage.records(KEY)) == 4
    assert "http://192.0.2.0:8081" not in endpoints(storage)  # ttl 1000: the soonest


def test_one_source_holds_a_bounded_share_of_a_key(clock):
    storage = ProviderStorage(StorageLimits(max_records_per_key_per_source=8), clock=clock)
    for i in range(12):
        storage.merge(KEY, record_value(i, clock), "203.0.113.66")
    assert len(storage.records(KEY)) == 8
    assert storage.merge(KEY, record_value(20, clock), "198.51.100.7").accepted == 1
    assert storage.stats.records_rejected == {"key_source_quota": 4}


def test_one_source_holds_a_bounded_number_of_records_over_all_keys(clock):
    storage = ProviderStorage(StorageLimits(max_records_per_source=10), clock=clock)
    hashes = [f"{i:032d}" for i in range(15)]
    for h in hashes:
        storage.merge(provider_key(h), record_value(1, clock, key=provider_key(h)), "203.0.113.66")
    assert storage.source_count("203.0.113.66") == 10
    assert storage.stats.records_rejected == {"source_quota": 5}
    this_node = storage.merge(
        provider_key(hashes[-1]), record_value(1, clock, key=provider_key(hashes[-1]))
    )
    assert this_node.accepted == 1  # no source: this node's own records have no quota


def test_the_total_is_bounded(clock):
    storage = ProviderStorage(StorageLimits(max_records=6), clock=clock)
    for i in range(10):
        h = f"{i:032d}"
        storage.merge(provider_key(h), record_value(i, clock, key=provider_key(h)), f"10.0.0.{i}")
    assert storage.record_count == 6
    assert storage.stats.records_rejected == {"storage_full": 4}


def test_expiry_frees_quota_and_space(clock):
    storage = ProviderStorage(StorageLimits(max_records_per_source=2), clock=clock)
    for i in range(2):
        storage.merge(KEY, record_value(i, clock, ttl=10), "203.0.113.66")
    clock.advance(10)
    assert storage.merge(KEY, record_value(5, clock), "203.0.113.66").accepted == 1
    assert storage.source_count("203.0.113.66") == 1


def test_replies_are_random_subsets_of_at_most_8_records_and_1150_bytes(storage, clock):
    for i in range(32):
        endpoint = f"https://provider-{i:02d}.example.org/p2p"
        storage.merge(KEY, record_value(i, clock, endpoint=endpoint), f"10.1.{i}.1")
    assert len(storage.records(KEY)) == 32
    seen = set()
    for _ in range(10):
        value = storage.get(KEY)
        reply = decode_value(KEY, value, clock())
        assert len(reply.records) <= MAX_REPLY_RECORDS and len(value) <= REPLY_VALUE_BUDGET
        seen.update(r.record.endpoint for r in reply.records)
    assert len(seen) > MAX_REPLY_RECORDS
    assert len(decode_value(KEY, storage.handoff_value(KEY), clock()).records) == 32


def test_nothing_is_handed_to_the_stock_republish(storage, clock):
    storage.merge(KEY, record_value(1, clock, ttl=86400), "198.51.100.1")
    clock.advance(7200)
    assert storage.iter_older_than(3600) == []
    assert [key for key, _ in storage] == [KEY]


def test_keys_near_returns_the_xor_closest_held_keys(storage, clock):
    keys = []
    for i in range(40):
        key = provider_key(f"{i:032d}")
        keys.append(key)
        storage.merge(key, record_value(1, clock, key=key), "198.51.100.1")
    target = keys[7]
    near = storage.keys_near(target, 5)
    expected = sorted(keys, key=lambda k: int.from_bytes(k, "big") ^ int.from_bytes(target, "big"))
    assert near[0] == target
    assert set(near) <= set(keys) and len(near) == 5
    assert near[:2] == expected[:2]


def test_merge_survives_a_long_run_of_replacements(clock):
    storage = ProviderStorage(clock=clock)
    for step in range(3000):
        clock.advance(1)
        storage.merge(KEY, record_value(step % 3, clock, ttl=100), "198.51.100.1")
    assert len(storage.records(KEY)) == 3
    assert len(storage._expiry) <= 2 * storage.record_count + 1024  # stale entries pruned
