"""Where the trust policy's evidence comes from: this node's bundles and the item's providers.

The policy (trust/item_trust.py, trust/attestation_verifier.py) judges attestation bundles and
asks for consistency proofs between a builder's checkpoints through two seams; this module
fills them from the network:

* `attestations_for(hash_part)`: the bundles this node holds itself (its own attestation, and
  those it carries for other builders) plus what the best few providers of the item serve
  under `/p2p/v1/attestations/<hash>` (a seeding node carries its items' bundles, so an item
  verifies while its builders are offline);
* `consistency_proof(builder_key, old, new)`: asked of the builder's own peer listener, which
  this node learns (peer_keys.py: proven by signed node information) from the providers that
  serve it bundles, and from the peers checkpoint gossip talks to when they share PeerKeys.

Only a proof the builder itself served may count as fork evidence when it fails (a relayed
one is treated as missing, protocol/attestation.md §7), hence `from_builder=True` only for a
URL PeerKeys proved to be the builder's.

Everything from a peer is bounded by the peer client; a peer that fails or misbehaves here
costs it the same rank as on the transfer path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from p2pcache.net.peer_client import PeerClient, PeerError, PeerMisbehaved
from p2pcache.net.peer_keys import PeerKeys
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.trust.attestation_verifier import ConsistencyProof

log = logging.getLogger(__name__)

MAX_BUNDLES = 64
"""Bundles handed to the policy per item (it judges at most this many)."""


class PeerEvidence:
    def __init__(
        self,
        client: PeerClient,
        providers: Callable[[str], Awaitable[list[str]]],
        ranking: PeerRanking,
        local_bundles: Callable[[str], list[bytes]],
        *,
        fanout: int = 3,
        peer_keys: PeerKeys | None = None,
    ) -> None:
        self.client = client
        self.providers = providers
        self.ranking = ranking
        self.local_bundles = local_bundles
        self.fanout = fanout
        self.peer_keys = peer_keys or PeerKeys(client)

    async def attestations_for(self, hash_part: str) -> list[bytes]:
        # The node's own bundle is proven from its log on disk: read in a thread.
        bundles = list(await asyncio.to_thread(self.local_bundles, hash_part))
        peers = self.ranking.order(await self.providers(hash_part))[: self.fanout]
        answers = await asyncio.gather(*(self._from_peer(url, hash_part) for url in peers))
        for answer in answers:
            bundles.extend(answer)
        return list(dict.fromkeys(bundles))[:MAX_BUNDLES]

    async def consistency_proof(
        self, builder_key: bytes, old: int, new: int
    ) -> ConsistencyProof | None:
        url = self.peer_keys.url_of(builder_key)
        if url is None:
            return None
        try:
            hashes = await self.client.fetch_consistency_proof(url, old, new)
        except PeerMisbehaved as e:
            self.ranking.record_misbehaved(url)
            log.info("builder %s sent a malformed consistency proof: %s", url, e)
            return None
        except PeerError as e:
            self.ranking.record_unavailable(url)
            log.info("could not get a consistency proof from builder %s: %s", url, e)
            return None
        if hashes is None:
            return None
        return ConsistencyProof(tuple(hashes), from_builder=True)

    def builder_url(self, builder_key: bytes) -> str | None:
        """The peer URL proven to be this builder's, if one has been met."""
        return self.peer_keys.url_of(builder_key)

    async def _from_peer(self, url: str, hash_part: str) -> list[bytes]:
        try:
            bundles = await self.client.fetch_attestations(url, hash_part)
        except PeerMisbehaved as e:
            self.ranking.record_misbehaved(url)
            log.info("peer %s sent a malformed list of attestations: %s", url, e)
            return []
        except PeerError as e:
            # Unreachable, failing or slow: ranked lower, as on the transfer path, so that a
            # provider that always times out here is not asked first on every miss.
            self.ranking.record_unavailable(url)
            log.debug("peer %s has no attestations for %s: %s", url, hash_part, e)
            return []
        if bundles:
            await self.peer_keys.key_of(url)  # is it a builder, whose proofs we may need?
        return bundles
