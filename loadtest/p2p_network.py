"""A small real peer network on loopback for the P2P benchmarks: seeders, DHT nodes, fetchers.

Every node is a real `python -m p2pcache serve` process of this repository, on its own
127.A.B.1 address (so the DHT's per-IP and per-/24 contact limits stay on, as in the tests).
The seeders' caches are filled beforehand with `p2pcache publish`, so when they start they
announce what they hold; `wait_announced` watches their /metrics until every key is out.

A seed store is a generated Guix-like store (p2pcache.testing) plus, optionally, one big item
copied from real directories (e.g. /usr/share/javascript), registered in the store database
the way the daemon registers an added tree (`source` store path over its NAR hash).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from harness import stop_process

from p2pcache.guix.nar import dump_nar
from p2pcache.guix.signing_key import render_acl, write_key_pair
from p2pcache.guix.store_db import StoreItemInfo
from p2pcache.guix.store_path import source_store_path
from p2pcache.testing import TestStore
from p2pcache.testing.file_tree import remove_read_only_tree
from p2pcache.testing.guix_db_writer import open_for_writing, register_valid_path
from p2pcache.testing.store_generator import generate_test_store
from tests import guix_client

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_env() -> dict[str, str]:
    """Nodes import this worktree's package, never an installed one."""
    return os.environ | {"PYTHONPATH": str(REPO)}


def node_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2pcache", *args]


# What-if runs only: a node with settings other than the shipped ones, patched into its
# defaults. `dht_rate`: DHT requests per second its DHT accepts from one IP (burst twice that;
# also the options dht.requests_per_second_per_ip and dht.request_burst_per_ip);
# `miss_concurrency`: narinfo misses it resolves at once (no option); `rtt_ms`: a network
# round trip between nodes of this many milliseconds, emulated in the node's own sends because
# this kernel has neither netem nor fq (no delay qdisc): every DHT datagram leaves half a round
# trip late, every HTTP request to a peer or upstream a whole round trip late (request and
# answer), and a new connection costs one more round trip (the TCP handshake). CPU work is
# unchanged; bandwidth is not limited.
_WHAT_IF = """
import asyncio, json, sys
import aiohttp
import p2pcache.network as network
from p2pcache.cli import main
from p2pcache.net.dht_protocol import DHTProtocol
what_if = json.loads(sys.argv.pop(1))
dht, resolver = network.DHTConfig, network.ResolverSettings
if "dht_rate" in what_if:
    rate = what_if["dht_rate"]
    network.DHTConfig = lambda **kw: dht(
        **{**kw, "requests_per_second_per_ip": rate, "request_burst_per_ip": 2 * rate}
    )
if "miss_concurrency" in what_if:
    network.ResolverSettings = lambda **kw: resolver(
        **{"max_concurrent": what_if["miss_concurrency"], **kw}
    )
if "rtt_ms" in what_if:
    rtt = what_if["rtt_ms"] / 1000
    send, request = DHTProtocol._send, aiohttp.ClientSession._request
    connect = aiohttp.TCPConnector._create_connection

    def late_send(self, payload, address):
        asyncio.get_running_loop().call_later(rtt / 2, send, self, payload, address)

    async def late_request(self, *args, **kwargs):
        await asyncio.sleep(rtt)
        return await request(self, *args, **kwargs)

    async def late_connect(self, *args, **kwargs):
        await asyncio.sleep(rtt)
        return await connect(self, *args, **kwargs)

    DHTProtocol._send = late_send
    aiohttp.ClientSession._request = late_request
    aiohttp.TCPConnector._create_connection = late_connect
sys.exit(main())
"""


def node_command_what_if(what_if: dict[str, float], *args: str) -> list[str]:
    return [sys.executable, "-c", _WHAT_IF, json.dumps(what_if), *args]


@dataclass
class SeedStore:
    store: TestStore
    small: list[StoreItemInfo]
    big: StoreItemInfo | None


def build_seed_store(root: Path, small_items: int, trees: list[Path]) -> SeedStore:
    """A generated store of `small_items` items, plus one item holding copies of `trees`."""
    store = generate_test_store(root, items=small_items, seed=11, large_items=0)
    small = list(store.items)
    if not trees:
        return SeedStore(store, small, None)
    staging = store.store_root / "bench-tree.staging"
    staging.mkdir()
    for tree in trees:
        shutil.copytree(tree, staging / tree.name, symlinks=True)
    summary = dump_nar(staging)
    path = source_store_path(summary.sha256, "bench-tree", store_dir=store.store_dir)
    staging.rename(store.store_root / path.basename)
    with open_for_writing(store.db_path) as conn:
        row = register_valid_path(
            conn,
            path=path.path,
            nar_sha256=summary.sha256,
            nar_size=summary.size,
            registration_time=int(time.time()),
            deriver=None,
            references=(),
        )
    big = StoreItemInfo(row, path.path, summary.sha256, summary.size, (), None, int(time.time()))
    return SeedStore(store, small, big)


def publish(data_dir: Path, store: TestStore, paths: list[str] | None = None) -> None:
    """Bake store items into a node's cache (all of them without `paths`)."""
    argv = node_command(
        "publish", "--data-dir", str(data_dir), "--store-root", str(store.store_root),
        "--db", str(store.db_path), "--log-level", "warning",
    )  # fmt: skip
    argv += ["--all"] if paths is None else paths
    subprocess.run(argv, cwd=REPO, env=node_env(), check=True)


@dataclass
class NodeProcess:
    name: str
    host: str
    guix_port: int
    admin_port: int
    peer_port: int
    dht_port: int
    data_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def guix_url(self) -> str:
        return f"http://{self.host}:{self.guix_port}"

    def metric(self, name: str) -> float:
        """Sum of a metric's samples on this node's /metrics (0 when absent)."""
        url = f"http://{self.host}:{self.admin_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return sum(float(v) for v in values)

    def metrics_matching(self, pattern: str) -> list[str]:
        """Non-zero samples of this node's metrics whose line matches `pattern`."""
        url = f"http://{self.host}:{self.admin_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return [
            line
            for line in text.splitlines()
            if not line.startswith("#") and re.search(pattern, line) and not line.endswith(" 0.0")
        ]

    def stop(self) -> None:
        stop_process(self.proc, 15.0)


@dataclass
class Network:
    """Node processes started here; `stop` ends every one of them (and only them)."""

    work: Path
    acl: Path
    bootstrap: str | None = None
    log_level: str = "warning"
    what_if: dict[str, float] = field(default_factory=dict)
    """Empty: the shipped node; otherwise see _WHAT_IF."""
    nodes: list[NodeProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        host: str,
        *,
        store: TestStore | None = None,
        options: dict[str, str] | None = None,
        log_level: str | None = None,
    ) -> NodeProcess:
        """Start a node on `host`; the first node started is everyone's DHT bootstrap."""
        data_dir = self.work / name
        data_dir.mkdir(exist_ok=True)
        guix, admin, peer = (free_port(host) for _ in range(3))
        dht = free_port(host, socket.SOCK_DGRAM)
        config = data_dir / "p2pcache.toml"
        config.write_text(render_toml(options or {}))
        command = partial(node_command_what_if, self.what_if) if self.what_if else node_command
        argv = command(
            "serve", "--config", str(config), "--data-dir", str(data_dir),
            "--store-root", str(store.store_root if store else data_dir / "no-store"),
            "--db", str(store.db_path if store else data_dir / "no-db.sqlite"),
            "--listen", f"{host}:{guix}", "--admin-listen", f"{host}:{admin}",
            "--peer-listen", f"{host}:{peer}", "--dht-listen", f"{host}:{dht}",
            "--guix-acl", str(self.acl), "--log-level", log_level or self.log_level,
        )  # fmt: skip
        if self.bootstrap:
            argv += ["--bootstrap", self.bootstrap]
        log = data_dir / "node.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=REPO, env=node_env(), stdout=out, stderr=out)
        node = NodeProcess(name, host, guix, admin, peer, dht, data_dir, proc, log)
        self.nodes.append(node)
        wait_listening(node, host, guix)
        wait_listening(node, host, admin)
        self.bootstrap = self.bootstrap or f"{host}:{dht}"
        return node

    def stop_node(self, node: NodeProcess) -> None:
        node.stop()
        self.nodes.remove(node)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()


def render_toml(options: dict[str, str]) -> str:
    """`{"peer.fetch_parallel": "2"}` -> TOML sections (values are TOML literals)."""
    sections: dict[str, list[str]] = {}
    for key, value in options.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"{name} = {value}")
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n\n" for s, lines in sections.items())


def wait_listening(node: NodeProcess, host: str, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"node {node.name} exited: see {node.log}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"node {node.name}: nothing listens on {host}:{port} after {timeout} s")


def wait_until(what: str, check, timeout: float = 120.0, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def wait_announced(node: NodeProcess, keys: int, timeout: float = 120.0) -> None:
    """Until the node has announced at least `keys` DHT keys (its items, derivation keys)."""
    wait_until(
        f"{node.name} to announce {keys} keys",
        lambda: node.metric("p2pcache_dht_keys_announced_total") >= keys,
        timeout,
    )


def sign_published(node: NodeProcess, hash_parts: list[str], timeout: float = 60.0) -> None:
    """Make a seeder sign the narinfos of items `p2pcache publish` baked before it started.

    Workaround: `publish` bakes without signing, and a node signs an item it vouches for only
    when it serves its narinfo (or bakes it itself), so until then its peer API answers 404
    for items it announces. Asking its Guix endpoint for every narinfo (pipelined, as Guix
    does) signs them; then wait until the peer API offers them.
    """
    for first in range(0, len(hash_parts), 1000):
        batch = hash_parts[first : first + 1000]
        replies = asyncio.run(guix_client.narinfos(node.host, node.guix_port, batch))
        if any(r.status != 200 for r in replies):
            raise RuntimeError(f"{node.name} does not serve every published narinfo")

    def offered() -> bool:
        base = f"http://{node.host}:{node.peer_port}/p2p/v1/narinfo/"
        try:
            for h in (hash_parts[0], hash_parts[-1]):
                urllib.request.urlopen(base + h, timeout=5).read()
        except urllib.error.HTTPError:
            return False
        return True

    wait_until(f"{node.name} to offer its items to peers", offered, timeout)


def wait_joined(node: NodeProcess, contacts: int, timeout: float = 30.0) -> None:
    wait_until(
        f"{node.name} to know {contacts} DHT contacts",
        lambda: node.metric("p2pcache_dht_routing_table_size") >= contacts,
        timeout,
    )


def write_acl(path: Path, data_dirs: list[Path]) -> None:
    """An ACL trusting the signing keys of these nodes (created now if absent)."""
    keys = []
    for data_dir in data_dirs:
        data_dir.mkdir(parents=True, exist_ok=True)
        keys.append(write_key_pair(data_dir).public)
    path.write_bytes(render_acl(keys))


def host_of(n: int) -> str:
    """The n-th node's own address: a /24 of its own inside 127.0.0.0/8."""
    return f"127.{40 + n // 250}.{n % 250 + 1}.1"


def hash_part(info: StoreItemInfo) -> str:
    return info.path.rsplit("/", 1)[-1][:32]


@contextlib.contextmanager
def running(network: Network) -> Iterator[Network]:
    try:
        yield network
    finally:
        network.stop()


def py_spy(node: NodeProcess, out: Path) -> subprocess.Popen:
    """Start sampling a node with py-spy (raw collapsed stacks into `out`)."""
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(node.proc.pid), "--rate", "200", "--format", "raw",
         "--threads", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy takes a moment to attach
    return spy


def stop_py_spy(spy: subprocess.Popen) -> None:
    """py-spy writes its output when interrupted."""
    spy.send_signal(signal.SIGINT)
    spy.wait(30)


def profile_summary(raw: Path, what: str, top: int = 15) -> None:
    """Leaf functions by samples, from py-spy's raw (collapsed stack) output."""
    leaves: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaves[frames[-1]] += int(count)
        threads[frames[0]] += int(count)
        for name in {f.split(" (")[0] for f in frames[1:]}:
            inclusive[name] += int(count)
        total += int(count)
    print(f"\npy-spy, {what}, {total} samples while busy; by thread:")
    for thread, n in threads.most_common(6):
        print(f"  {100 * n / total:5.1f}%  {thread}")
    print("top leaf functions:")
    for leaf, n in leaves.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {leaf}")
    print("top functions including what they call:")
    for name, n in inclusive.most_common(2 * top):
        print(f"  {100 * n / total:5.1f}%  {name}")


@contextlib.contextmanager
def work_directory(parent: Path, prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A fresh directory for one benchmark run, removed at the end unless `keep` (for logs).

    World-readable, since nginx's worker runs as another user; the generated store inside has
    read-only directories, which remove_read_only_tree handles.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    work.chmod(0o755)
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}")
        else:
            remove_read_only_tree(work)
