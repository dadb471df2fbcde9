"""A small p2pcache network on this machine, for someone who wants to see one work.

Three nodes on loopback, each on its own 127.0.X.1 address (so the DHT's per-address limits
behave as they would between machines): a seed that publishes a generated Guix-like store, and
two nodes that know nothing but the seed's DHT address and trust the seed's signing key. The
demo asks the third node's Guix endpoint for an item only the seed has, as `guix substitute`
would, checks the bytes against the narinfo's NarHash, and reports what happened. Everything
lives in one temporary directory, removed when the demo stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from p2pcache.config import Config, ListenAddress
from p2pcache.errors import P2PCacheError
from p2pcache.guix import nix32
from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.guix.signing_key import render_acl
from p2pcache.node import Node
from p2pcache.testing import TestStore, generate_test_store, remove_test_store

log = logging.getLogger(__name__)

# A store big enough to look real, small enough to generate in a second or two.
DEMO_ITEMS = 40
# The largest file in it: the fetched item is a NAR of about this size.
DEMO_MAX_FILE = 4 << 20
# How long the demo waits for the seed's announcement to reach the other nodes, and for the
# fetch itself; on loopback both take well under a second.
FIND_TIMEOUT = 30.0
FETCH_TIMEOUT = 60.0
NODE_NAMES = ("seed", "node-b", "node-c")


class DemoError(P2PCacheError):
    """The demo network could not show what it meant to show."""


@dataclass(frozen=True)
class DemoFetch:
    """What happened when the last node's Guix endpoint was asked for the seed's item."""

    store_path: str
    nar_size: int
    nar_hash: str
    narinfo_url: str
    nar_url: str
    providers: list[str]
    narinfo_seconds: float
    nar_seconds: float
    hash_verified: bool


def node_address(index: int) -> str:
    """The loopback address of demo node `index` (127.0.80.1, 127.0.81.1, ...)."""
    return f"127.0.{80 + index}.1"


def demo_config(workdir: Path, index: int, store: TestStore | None, **changes) -> Config:
    """A node of the demo: its own loopback address, free ports, files under `workdir`."""
    host = node_address(index)
    name = NODE_NAMES[index]
    base = Config(
        data_dir=workdir / name,
        store_root=store.store_root if store else workdir / name / "no-store",
        db=store.db_path if store else workdir / name / "no-db.sqlite",
        listen=ListenAddress(host, 0),
        peer_listen=ListenAddress(host, 0),
        admin_listen=ListenAddress(host, 0),
        dht_listen=ListenAddress(host, 0),
        guix_acl=workdir / "acl",
        host_name=f"demo-{name}",
        db_poll_interval=1.0,
        zstd_threads=1,
        cache_max_size=1 << 30,
    )
    return replace(base, **changes)


class DemoNetwork:
    """Three nodes started and stopped as one; `fetch` shows the peer-to-peer path."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="p2pcache-demo-"))
        self.store: TestStore | None = None
        self.nodes: list[Node] = []

    async def start(self) -> None:
        """Generate the store, start the seed, let it publish, then start the two others."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.store = await asyncio.to_thread(
            generate_test_store,
            self.workdir / "store",
            items=DEMO_ITEMS,
            max_file_size=DEMO_MAX_FILE,
            large_items=2,
        )
        (self.workdir / "acl").write_bytes(render_acl([]))
        seed = Node(demo_config(self.workdir, 0, self.store))
        self.nodes.append(seed)
        await seed.start()
        await asyncio.wait_for(seed.publisher.synced.wait(), FIND_TIMEOUT)
        assert seed.key is not None and seed.network is not None and seed.network.dht
        (self.workdir / "acl").write_bytes(render_acl([seed.key.public]))
        bootstrap = (ListenAddress(*seed.network.dht.address),)
        for index in (1, 2):
            node = Node(demo_config(self.workdir, index, None, bootstrap=bootstrap))
            self.nodes.append(node)
            await node.start()
        # A node's first start leaves the existing store unbaked (`p2pcache publish --all`
        # does that); the demo bakes it now that there are nodes to hear the announcements.
        for info in self.store.items:
            item = seed.index.get(info.path.rsplit("/", 1)[-1][:32])
            if item is not None and not item.is_baked:
                seed.publisher.enqueue_item(item)
        await seed.publisher.wait_idle(FETCH_TIMEOUT)

    async def stop(self) -> None:
        """Stop the nodes (last started first) and remove the demo's directory."""
        for node in reversed(self.nodes):
            await node.stop()
        self.nodes.clear()
        if self.store is not None:
            await asyncio.to_thread(remove_test_store, self.store.root)
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    def chosen_item(self):
        """The item to fetch: the seed's largest (a few MiB, so the numbers mean something)."""
        assert self.store is not None
        return max(self.store.items, key=lambda i: i.nar_size or 0)

    async def fetch(self) -> DemoFetch:
        """Ask the last node's Guix endpoint for the chosen item, as `guix substitute` would."""
        item = self.chosen_item()
        hash_part = item.path.rsplit("/", 1)[-1][:32]
        last = self.nodes[-1]
        assert last.network is not None
        providers = await self._providers(last, hash_part)
        base = f"http://{last.config.listen.host}:{last.guix_port}"
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            async with session.get(f"{base}/{hash_part}.narinfo") as response:
                body = await response.read()
                if response.status != 200:
                    raise DemoError(f"{base} answered {response.status} for {hash_part}.narinfo")
            narinfo_seconds = time.monotonic() - started
            narinfo = parse_narinfo(body)
            url = next((u for u in narinfo.urls if u.compression == "none"), None)
            if url is None or narinfo.nar_hash is None:
                raise DemoError(f"the narinfo from {base} offers no uncompressed NAR")
            digest = hashlib.sha256()
            size = 0
            started = time.monotonic()
            async with session.get(f"{base}/{url.url}") as response:
                if response.status != 200:
                    raise DemoError(f"{base} answered {response.status} for {url.url}")
                async for piece in response.content.iter_chunked(1 << 16):
                    digest.update(piece)
                    size += len(piece)
            nar_seconds = time.monotonic() - started
        verified = narinfo.nar_hash == f"sha256:{nix32.encode(digest.digest())}"
        return DemoFetch(
            store_path=item.path,
            nar_size=size,
            nar_hash=narinfo.nar_hash,
            narinfo_url=f"{base}/{hash_part}.narinfo",
            nar_url=f"{base}/{url.url}",
            providers=providers,
            narinfo_seconds=narinfo_seconds,
            nar_seconds=nar_seconds,
            hash_verified=verified and size == narinfo.nar_size,
        )

    async def _providers(self, node: Node, hash_part: str) -> list[str]:
        """Wait until `node` finds the item's providers in the DHT (announcing is batched)."""
        assert node.network is not None
        deadline = time.monotonic() + FIND_TIMEOUT
        while time.monotonic() < deadline:
            providers = await node.network.providers_of(hash_part)
            if providers:
                return providers
            await asyncio.sleep(0.1)
        raise DemoError(f"no node announced {hash_part} within {FIND_TIMEOUT:.0f} s")
