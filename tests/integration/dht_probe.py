"""A bare UDP socket that speaks the DHT's RPCs by hand, to look inside a node from outside.

It asks a node what any peer may ask (PING, FIND_NODE, FIND_VALUE, STORE), and sends what no
honest peer sends. Requests are framed as rpcudp frames them (a type byte, a 20-byte message
id, then msgpack `[name, args]`) with the project's own codec, and replies are matched by id.
"""

from __future__ import annotations

import os
import time

from p2pcache.net.msgpack_codec import MsgpackError, pack, unpack
from p2pcache.net.provider_record import SignedRecord, decode_value
from tests.net.dht_network import RawPeer, open_raw_peer

Address = tuple[str, int]


def request_datagram(name: str, args: list, msg_id: bytes | None = None) -> bytes:
    return b"\x00" + (msg_id or os.urandom(20)) + pack([name, args])


class DHTProbe:
    """One socket at `host`, posing as the node `node_id`."""

    def __init__(self, peer: RawPeer, node_id: bytes) -> None:
        self.peer = peer
        self.node_id = node_id

    @classmethod
    async def open(cls, host: str, node_id: bytes | None = None) -> DHTProbe:
        peer, _ = await open_raw_peer(host)
        return cls(peer, node_id or os.urandom(20))

    def close(self) -> None:
        self.peer.close()

    def send(self, data: bytes, address: Address) -> None:
        self.peer.send(data, address)

    async def request(
        self, address: Address, name: str, args: list, timeout: float = 2.0
    ) -> object | None:
        """Send one request and return the unpacked reply (None if none came in time)."""
        msg_id = os.urandom(20)
        self.send(request_datagram(name, args, msg_id), address)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = await self.peer.reply(left)
            if got is None:
                return None
            data, _ = got
            if data[:1] == b"\x01" and data[1:21] == msg_id:
                try:
                    return unpack(data[21:])
                except MsgpackError:
                    return None
        return None

    async def ping(self, address: Address) -> bytes | None:
        reply = await self.request(address, "ping", [self.node_id])
        return reply if isinstance(reply, bytes) else None

    async def find_node(self, address: Address, target: bytes) -> list[tuple[bytes, str, int]]:
        reply = await self.request(address, "find_node", [self.node_id, target])
        assert isinstance(reply, list), f"no contact list from {address}: {reply!r}"
        return [(c[0], c[1], c[2]) for c in reply]

    async def find_value(self, address: Address, key: bytes) -> bytes | None:
        """The value the node holds under `key`, or None (it answered with contacts)."""
        reply = await self.request(address, "find_value", [self.node_id, key])
        if isinstance(reply, dict):
            return reply.get("value")
        assert isinstance(reply, list), f"no answer from {address}: {reply!r}"
        return None

    async def records(self, address: Address, key: bytes) -> list[SignedRecord]:
        """The valid records the node returns under `key` (a FIND_VALUE reply is a subset)."""
        value = await self.find_value(address, key)
        if value is None:
            return []
        return list(decode_value(key, value, time.time()).records)

    async def store(self, address: Address, key: bytes, value: object) -> object | None:
        return await self.request(address, "store", [self.node_id, key, value])
