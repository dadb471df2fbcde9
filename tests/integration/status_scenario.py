"""Two nodes with a story to tell: what the status command and the status page are tested on.

A seed publishes a small store in which one item was damaged on disk, and a second node joined
to it answers Guix: one narinfo it finds at the seed (a miss), one nobody has (a miss), the
first one again (a hit), then the item's NAR, fetched from the seed (a transfer). The damaged
item is then asked of the seed, which cuts the stream (a verification failure).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from p2pcache.config import ListenAddress
from p2pcache.guix.signing_key import render_acl
from p2pcache.node import Node
from p2pcache.testing import TestStore
from tests import guix_client
from tests.integration.conftest import node_config, running_node
from tests.integration.test_peer_network import addresses, wait_until_findable


@dataclass
class StatusStory:
    seed: Node
    node: Node
    fetched: str
    """Basename of the item `node` fetched from the seed."""
    damaged: str
    """Basename of the seed's damaged store item."""


def damage_largest_item(store: TestStore) -> str:
    """Change one byte of the largest item's first file (same size); returns its basename."""
    item = max(store.items, key=lambda i: i.nar_size)
    source = store.real_path(item.path)
    files = [p for p in [source, *source.rglob("*")] if p.is_file() and not p.is_symlink()]
    files[0].chmod(0o644)
    files[0].write_bytes(b"X" + files[0].read_bytes()[1:])
    return item.path.rsplit("/", 1)[-1]


@contextlib.asynccontextmanager
async def status_story(tmp_path, store: TestStore) -> AsyncIterator[StatusStory]:
    damaged = damage_largest_item(store)
    async with contextlib.AsyncExitStack() as stack:
        seed = await stack.enter_async_context(
            running_node(
                node_config(tmp_path / "seed", store, bake_new_items=False, **addresses(40))
            )
        )
        acl = tmp_path / "acl"
        acl.write_bytes(render_acl([seed.key.public]))
        node = await stack.enter_async_context(
            running_node(
                node_config(
                    tmp_path / "node",
                    None,
                    guix_acl=acl,
                    bootstrap=(ListenAddress(*seed.network.dht.address),),
                    **addresses(41),
                )
            )
        )
        good = max(
            (i for i in store.items if i.path.rsplit("/", 1)[-1] != damaged),
            key=lambda i: i.nar_size,
        )
        await seed.publisher.bake(seed.publisher._job(good))
        await wait_until_findable(node, [good])
        host, port = node.config.listen.host, node.guix_port
        fetched = good.path.rsplit("/", 1)[-1]
        replies = await guix_client.narinfos(host, port, [fetched[:32], "0" * 32])
        replies += await guix_client.narinfos(host, port, [fetched[:32]])
        assert [r.status for r in replies] == [200, 404, 200], [
            (r.status, r.body[:200]) for r in replies
        ]
        nar = await guix_client.get(host, port, f"/nar/{fetched}")
        assert hashlib.sha256(nar.body).digest() == good.nar_sha256
        cut = await guix_client.get(seed.config.listen.host, seed.guix_port, f"/nar/{damaged}")
        assert not cut.complete
        yield StatusStory(seed, node, fetched, damaged)
