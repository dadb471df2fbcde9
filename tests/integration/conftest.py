"""Fixtures for tests that run real nodes on loopback (on uvloop, as `p2pcache serve` does)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import uvloop

from p2pcache.config import Config, ListenAddress
from p2pcache.node import Node
from p2pcache.testing import TestStore


def pytest_asyncio_loop_factories(config, item):
    """Nodes run on uvloop in production, so they do here too."""
    return {"uvloop": uvloop.new_event_loop}


def node_config(data_dir: Path, store: TestStore | None, **changes) -> Config:
    """A node on free loopback ports, fed by `store` (or by no store at all)."""
    base = Config(
        data_dir=data_dir,
        store_root=store.store_root if store else data_dir / "no-store",
        db=store.db_path if store else data_dir / "no-db.sqlite",
        listen=ListenAddress("127.0.0.1", 0),
        admin_listen=ListenAddress("127.0.0.1", 0),
        peer_listen=ListenAddress("127.0.0.1", 0),
        dht_listen=ListenAddress("127.0.0.1", 0),
        guix_acl=data_dir / "no-acl",
        host_name="test-node",
        db_poll_interval=0.2,
        zstd_threads=2,
    )
    return replace(base, **changes)


@contextlib.asynccontextmanager
async def running_node(config: Config) -> AsyncIterator[Node]:
    node = Node(config)
    await node.start()
    try:
        await node.publisher.synced.wait()
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def node(tmp_path, test_store) -> AsyncIterator[Node]:
    async with running_node(node_config(tmp_path / "node", test_store)) as n:
        yield n
