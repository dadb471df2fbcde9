"""Fixtures for the deploy/ checks: the repository's deploy folder and a real node's /metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
import uvloop

from p2pcache.testing import generate_test_store, remove_test_store
from tests import guix_client
from tests.integration.conftest import (  # noqa: F401 (the hook runs nodes on uvloop here too)
    node_config,
    pytest_asyncio_loop_factories,
    running_node,
)

REPOSITORY = Path(__file__).resolve().parents[2]
DEPLOY = REPOSITORY / "deploy"


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


async def _exposition_under_traffic(tmp: Path) -> str:
    """Start a node on loopback, give it a hit, a miss and a NAR download, then scrape it."""
    store = generate_test_store(tmp / "store", items=5, seed=2)
    try:
        async with running_node(node_config(tmp / "node", store)) as node:
            base = store.items[0].path.rsplit("/", 1)[-1]
            await guix_client.narinfos("127.0.0.1", node.guix_port, [base[:32], "0" * 32])
            await guix_client.get("127.0.0.1", node.guix_port, f"/nar/{base}")
            await node.publisher.wait_idle(30)
            await node.refresh_gauges()
            return await asyncio.to_thread(_scrape, node.admin_port)
    finally:
        remove_test_store(tmp / "store")


@pytest.fixture(scope="session")
def node_exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The /metrics text of a real node (admin listener) after some traffic."""
    return uvloop.run(_exposition_under_traffic(tmp_path_factory.mktemp("deploy-node")))
