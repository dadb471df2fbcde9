"""Which node answers at a peer URL: its identity key, proven by its signed node information.

A builder is a node, and its identity key signs both its attestations and its node
information, so a consistency proof served at a URL counts as the builder's own (and a failing
one as evidence against it, protocol/attestation.md §7) only when that URL is proven to be the
builder's. The node information must be signed by the key AND name that very URL as the
node's peer URL: a copy of a builder's signed document replayed by another peer under its own
URL must not make that peer's proofs count as the builder's.

Only proven keys are remembered (a peer that could not answer is asked again next time),
bounded, least recently used first out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from p2pcache.net.peer_client import PeerClient, PeerError

log = logging.getLogger(__name__)

MAX_PEERS = 4096
"""Peer URLs (and builder keys) remembered."""


def _remember(table: OrderedDict, key, value, bound: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > bound:
        table.popitem(last=False)


class PeerKeys:
    def __init__(self, client: PeerClient, *, max_peers: int = MAX_PEERS) -> None:
        self.client = client
        self.max_peers = max_peers
        self._key_of: OrderedDict[str, bytes] = OrderedDict()
        self._url_of: OrderedDict[bytes, str] = OrderedDict()

    async def key_of(self, url: str) -> bytes | None:
        """The identity key of the node at `url`, or None when it cannot be proven."""
        key = self._key_of.get(url)
        if key is not None:
            self._key_of.move_to_end(url)
            return key
        try:
            info = await self.client.node_info(url)
        except PeerError as e:
            log.debug("peer %s gave no usable node information: %s", url, e)
            return None
        if info.peer_url.rstrip("/") != url.rstrip("/"):
            return None
        _remember(self._key_of, url, info.public_key, self.max_peers)
        _remember(self._url_of, info.public_key, url, self.max_peers)
        return info.public_key

    def url_of(self, key: bytes) -> str | None:
        """The peer URL most recently proven to be the node with this identity key."""
        return self._url_of.get(key)
