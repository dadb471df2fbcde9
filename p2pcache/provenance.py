"""Where the node found the items it promised to Guix, kept until their NARs are cached.

The NAR download that follows a miss needs to know where the narinfo came from (the upstream
to ask first) and on what grounds it was accepted (the trust policy's decision and the
attestation bundles it was made from, judged again before the NAR is committed). That is
kept here, apart from the item itself, which the index holds: a node that promised a hundred
thousand items it never had to fetch (a `guix weather`, a dry run) keeps a few hundred bytes
for each, not the item's references and signed narinfo, and never more bundle bytes than
its bound. Losing an entry costs little: the download then asks the upstreams in order and
gathers the bundles again.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcache.cache.index import Origin
from p2pcache.trust.policy import Decision

MAX_ITEMS = 100_000
MAX_BUNDLE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Provenance:
    origin: Origin
    source: str
    """The peer's or the upstream's URL."""
    decision: Decision | None = None
    """The trust policy's decision, when the policy consulted attestations."""
    bundles: tuple[bytes, ...] = ()
    """The bundles it was made from, when small enough to keep (resolver.KEPT_BUNDLE_BYTES)."""

    @property
    def bundle_bytes(self) -> int:
        return sum(map(len, self.bundles))


class Provenances:
    """Provenance by hash part, the oldest forgotten first, bounded in count and in the
    bytes of bundles kept."""

    def __init__(
        self, max_items: int = MAX_ITEMS, max_bundle_bytes: int = MAX_BUNDLE_BYTES
    ) -> None:
        self.max_items = max_items
        self.max_bundle_bytes = max_bundle_bytes
        self._kept: dict[str, Provenance] = {}
        self.bundle_bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, hash_part: str) -> Provenance | None:
        return self._kept.get(hash_part)

    def add(self, hash_part: str, provenance: Provenance) -> None:
        self.pop(hash_part)  # re-added: now the newest
        self._kept[hash_part] = provenance
        self.bundle_bytes += provenance.bundle_bytes
        while len(self._kept) > self.max_items or self.bundle_bytes > self.max_bundle_bytes:
            self.pop(next(iter(self._kept)))

    def pop(self, hash_part: str) -> None:
        """Forget one (its NAR is cached, or its promise withdrawn)."""
        gone = self._kept.pop(hash_part, None)
        if gone is not None:
            self.bundle_bytes -= gone.bundle_bytes
