"""Real DHT nodes on loopback for tests: each on its own 127.A.B.1, so each has its own /24
and the routing table's per-IP and per-/24 limits stay on while tests run."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from p2pcache.net.dht import DHTConfig, DHTNode
from p2pcache.net.identity import NodeIdentity

# Short timeouts: every peer is on loopback, and a test waiting for dead nodes should not
# wait long. Generous per-IP rate limits: tests send in bursts.
TEST_CONFIG = DHTConfig(
    rpc_timeout=0.3,
    maintenance_interval=3600,
    refresh_on_join=True,
    requests_per_second_per_ip=2000,
    request_burst_per_ip=4000,
)

# Second octet for this process (tests of several processes must not reuse addresses).
_SECOND_OCTET = 100 + os.getpid() % 100
_addresses = itertools.count(1)


def fresh_address() -> str:
    """An unused 127.A.B.1 (a /24 of its own), all of which reach the loopback interface."""
    n = next(_addresses)
    return f"127.{_SECOND_OCTET}.{n % 250 + 1}.{n // 250 + 1}"


class FakeClock:
    """A wall clock that tests move by hand (record lifetimes are judged against it)."""

    def __init__(self, now: float = 1_764_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def start_node(
    bootstrap: Sequence[DHTNode] = (),
    config: DHTConfig = TEST_CONFIG,
    **kwargs: object,
) -> DHTNode:
    node = DHTNode(NodeIdentity.generate(), config, **kwargs)  # type: ignore[arg-type]
    await node.start(fresh_address(), 0, [n.address for n in bootstrap])
    return node


@contextlib.asynccontextmanager
async def dht_network(
    count: int, config: DHTConfig = TEST_CONFIG, **kwargs: object
) -> AsyncIterator[list[DHTNode]]:
    """`count` nodes, each joined through a random earlier one; all stopped afterwards."""
    nodes: list[DHTNode] = []
    try:
        nodes.append(await start_node((), config, **kwargs))
        for index in range(1, count):
            nodes.append(await start_node([nodes[(index * 7919) % index]], config, **kwargs))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def with_config(**changes: object) -> DHTConfig:
    return replace(TEST_CONFIG, **changes)  # type: ignore[arg-type]


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket speaking rpcudp by hand, for sending what no honest node sends."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.received.put_nowait((data, addr))

    def send(self, data: bytes, address: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, address)

    async def reply(self, timeout: float = 1.0) -> tuple[bytes, tuple] | None:
        try:
            return await asyncio.wait_for(self.received.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_raw_peer(host: str | None = None) -> tuple[RawPeer, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        RawPeer, local_addr=(host or fresh_address(), 0), family=socket.AF_INET
    )
    return protocol, transport.get_extra_info("sockname")[:2]
