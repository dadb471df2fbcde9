"""What a DHT node holds for others: validated provider records, several per key, expiring.

kademlia's IStorage is a key -> value map; the stock ForgetfulStorage keeps one value per key
(last writer wins), checks nothing and expires by arrival time, which the stock hourly
republish keeps resetting (so nothing ever expires). This storage instead:

* decodes every stored value and keeps only the records that pass protocol/dht.md's checks
  (signature bound to the key, lifetime at most a day, not expired, not too large);
* merges: one record per signer (and kind) under a key, the newest one;
* is bounded: records per key, records per key from one source, records from one source
  over all keys, records in total;
* expires each record at its signed `expires` (a heap, so purging costs nothing when nothing
  is due), whatever anyone republishes;
* answers FIND_VALUE with a random subset of at most 8 records and about 1,150 bytes, which
  keeps the reply in one unfragmented datagram and spreads load over all providers.

Sources are IP addresses of the peer that sent the STORE (records are free to sign with
throwaway keys, so a quota per key pair would mean nothing). Records stored by this node
itself (its own announcements) have no source and no quota.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kademlia.storage import IStorage

from p2pcache.net.dht_stats import DHTStats
from p2pcache.net.provider_record import (
    MAX_VALUE_SIZE,
    RecordKind,
    SignedRecord,
    decode_value,
    encode_value,
    select_for_reply,
)

log = logging.getLogger(__name__)

Identity = tuple[bytes, RecordKind]


@dataclass(frozen=True)
class StorageLimits:
    """Bounds on what a node holds for others; every one can be configured."""

    # Providers kept per key: more than a reply carries (8), so that replies vary, and enough
    # for a popular item; beyond it the soonest-expiring record gives way.
    max_records_per_key: int = 32
    # Records one source may place under one key: a single address (one attacker, or one
    # relaying stock node) cannot take over a key's slots.
    max_records_per_key_per_source: int = 8
    # Records one source may have stored here over all keys. A seeder announcing 100k items
    # into a network of 100 nodes places 20,000 records on each (k = 20 replicas per key).
    max_records_per_source: int = 20_000
    # Records held in total (about 300 bytes each in memory: 60 MB).
    max_records: int = 200_000


@dataclass(frozen=True)
class MergeOutcome:
    """What a STORE did: records accepted, already known, and rejected by reason."""

    accepted: int = 0
    unchanged: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def is_accepted(self) -> bool:
        """True when the value held at least one acceptable record (new or already known)."""
        return self.accepted + self.unchanged > 0


class _Held:
    __slots__ = ("record", "source")

    def __init__(self, record: SignedRecord, source: str | None) -> None:
        self.record = record
        self.source = source


class ProviderStorage(IStorage):
    """An IStorage of validated, merged, expiring provider and outputs records."""

    def __init__(
        self,
        limits: StorageLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        stats: DHTStats | None = None,
    ) -> None:
        self.limits = limits or StorageLimits()
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = stats or DHTStats()
        self._keys: dict[bytes, dict[Identity, _Held]] = {}
        self._sorted_keys: list[int] = []  # the keys as integers, for keys_near
        self._expiry: list[tuple[int, bytes, Identity]] = []  # heap; entries may be stale
        self._per_source: Counter[str] = Counter()
        self._per_key_source: Counter[tuple[bytes, str]] = Counter()
        self._count = 0

    # -- writing -------------------------------------------------------------------------------

    def merge(self, key: bytes, value: object, source: str | None = None) -> MergeOutcome:
        """Validate the records in `value` (found under `key`) and keep the acceptable ones."""
        now = self.clock()
        self.purge_expired(now)
        decoded = decode_value(key, value, now)
        rejected: Counter[str] = Counter(error.reason for error in decoded.rejected)
        accepted = unchanged = 0
        for record in decoded.records:
            verdict = self._insert(record, source)
            if verdict == "stored":
                accepted += 1
            elif verdict == "unchanged":
                unchanged += 1
            else:
                rejected[verdict] += 1
        self.stats.records_stored += accepted
        self.stats.records_rejected.update(rejected)
        if rejected:
            log.debug(
                "refused %d record(s) under key %s from %s: %s",
                rejected.total(),
                key.hex()[:12],
                source or "this node",
                ", ".join(sorted(rejected)),
            )
        return MergeOutcome(accepted, unchanged, rejected)

    def add(self, record: SignedRecord, source: str | None = None) -> str:
        """Keep an already-checked record (this node's own); returns stored/unchanged/reason."""
        self.purge_expired(self.clock())
        verdict = self._insert(record, source)
        if verdict == "stored":
            self.stats.records_stored += 1
        return verdict

    def __setitem__(self, key: bytes, value: object) -> None:
        """IStorage: a STORE without a known source (the protocol calls `merge` instead)."""
        self.merge(key, value)

    def _insert(self, record: SignedRecord, source: str | None) -> str:
        limits = self.limits
        held = self._keys.get(record.key)
        identity = record.identity
        previous = held.get(identity) if held else None
        if previous is not None:
            if not record.is_newer_than(previous.record):
                return "unchanged"
            if source is not None and source != previous.source:
                if self._per_source[source] >= limits.max_records_per_source:
                    return "source_quota"
                if self._per_key_source[(record.key, source)] >= (
                    limits.max_records_per_key_per_source
                ):
                    return "key_source_quota"
            self._forget(record.key, identity)
            self._keep(record, source)
            return "stored"
        if source is not None:
            if self._per_source[source] >= limits.max_records_per_source:
                return "source_quota"
            if self._per_key_source[(record.key, source)] >= limits.max_records_per_key_per_source:
                return "key_source_quota"
        if held is not None and len(held) >= limits.max_records_per_key:
            # The key is full: the record that would expire first gives way, if the newcomer
            # outlives it.
            soonest = min(held.values(), key=lambda h: h.record.record.expires)
            if soonest.record.record.expires >= record.record.expires:
                return "key_full"
            self._forget(record.key, soonest.record.identity)
        elif self._count >= limits.max_records:
            return "storage_full"
        self._keep(record, source)
        return "stored"

    def _keep(self, record: SignedRecord, source: str | None) -> None:
        held = self._keys.get(record.key)
        if held is None:
            held = self._keys[record.key] = {}
            bisect.insort(self._sorted_keys, int.from_bytes(record.key, "big"))
        held[record.identity] = _Held(record, source)
        self._count += 1
        if source is not None:
            self._per_source[source] += 1
            self._per_key_source[(record.key, source)] += 1
        heapq.heappush(self._expiry, (record.record.expires, record.key, record.identity))
        if len(self._expiry) > 2 * self._count + 1024:
            self._rebuild_expiry_heap()

    def _forget(self, key: bytes, identity: Identity) -> None:
        held = self._keys[key]
        gone = held.pop(identity)
        self._count -= 1
        if gone.source is not None:
            _decrement(self._per_source, gone.source)
            _decrement(self._per_key_source, (key, gone.source))
        if not held:
            del self._keys[key]
            key_int = int.from_bytes(key, "big")
            index = bisect.bisect_left(self._sorted_keys, key_int)
            del self._sorted_keys[index]

    def purge_expired(self, now: float | None = None) -> int:
        """Drop every record whose signed expiry has passed; returns how many."""
        now = self.clock() if now is None else now
        expiry = self._expiry
        dropped = 0
        while expiry and expiry[0][0] <= now:
            expires, key, identity = heapq.heappop(expiry)
            held = self._keys.get(key)
            current = held.get(identity) if held else None
            if current is not None and current.record.record.expires == expires:
                self._forget(key, identity)
                dropped += 1
        self.stats.records_expired += dropped
        return dropped

    def _rebuild_expiry_heap(self) -> None:
        self._expiry = [
            (h.record.record.expires, key, identity)
            for key, held in self._keys.items()
            for identity, h in held.items()
        ]
        heapq.heapify(self._expiry)

    # -- reading -------------------------------------------------------------------------------

    def records(self, key: bytes) -> list[SignedRecord]:
        """Every unexpired record held under `key`."""
        self.purge_expired()
        held = self._keys.get(key)
        return [h.record for h in held.values()] if held else []

    def get(self, key: bytes, default: object = None) -> object:
        """IStorage / FIND_VALUE: a random reply-sized value of the key's records, or default."""
        records = self.records(key)
        if not records:
            return default
        return select_for_reply(records, self.rng)

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def handoff_value(self, key: bytes) -> bytes | None:
        """All of a key's records in one value (for a new node taking over the key), or None."""
        records = self.records(key)
        if not records:
            return None
        return select_for_reply(records, self.rng, max_records=len(records), budget=MAX_VALUE_SIZE)

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        """IStorage: nothing. Republishing other nodes' records is what made them immortal in
        the stock library; here each owner re-announces its own records (DHTNode)."""
        return []

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """IStorage: (key, value of all its records) pairs."""
        self.purge_expired()
        for key, held in list(self._keys.items()):
            yield key, encode_value(h.record for h in held.values())

    def keys_near(self, target: bytes, limit: int) -> list[bytes]:
        """Up to `limit` held keys closest to `target` (XOR), from a window of the sorted keys.

        Keys sharing a long prefix with `target` are adjacent in numeric order, so a window
        around its position holds the XOR-closest keys (up to the window's edges).
        """
        target_int = int.from_bytes(target, "big")
        keys = self._sorted_keys
        index = bisect.bisect_left(keys, target_int)
        window = keys[max(0, index - limit) : index + limit]
        window.sort(key=lambda k: k ^ target_int)
        return [k.to_bytes(20, "big") for k in window[:limit]]

    @property
    def record_count(self) -> int:
        return self._count

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def source_count(self, source: str) -> int:
        """Records currently held that `source` stored."""
        return self._per_source[source]


def _decrement(counter: Counter, item: object) -> None:
    counter[item] -= 1
    if counter[item] <= 0:
        del counter[item]
