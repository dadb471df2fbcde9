"""Real `p2pcache serve` processes on loopback, for tests that need separate nodes.

Each node gets its own 127.A.B.1 address (so the DHT's per-IP and per-/24 limits stay on), its
own data directory and a TOML configuration file written here, and listens on ports the kernel
picks: the ports are read back from the node's log ("peer API on …, DHT on HOST:PORT (UDP)",
"serving Guix substitutes on http://HOST:PORT (admin and /metrics on http://HOST:PORT)").

Nodes run as `python -m p2pcache` from this checkout (PYTHONPATH set to the repository root), so
the code under test is the worktree's, not whatever `p2pcache` script is installed. A cluster
kills every process it started when it is closed, whatever happened before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from p2pcache.guix.signing_key import GuixPublicKey, parse_public_key, write_key_pair
from p2pcache.testing import TestStore

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long a node may take to start (imports, index, listeners, DHT join) on a busy machine.
START_TIMEOUT = 30.0
# SIGTERM grace before SIGKILL when a cluster is closed.
STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1

_READY = re.compile(
    r"serving Guix substitutes on http://(?P<guix>\S+) \(admin and /metrics on http://(?P<admin>\S+)\)"
)
_NETWORK = re.compile(
    r"peer API on \S+ \(advertised as (?P<peer>\S+)\), DHT on (?P<dht>\S+) \(UDP\)"
)


class NodeFailed(AssertionError):
    """A node process exited or did not become ready; the message holds its log tail."""


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def p2pcache_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2pcache", *args]


def _die_with_parent() -> None:
    """In the child: be killed if the test process dies (even by SIGKILL) before it stops us."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the cluster's close() still stops every node


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _toml_string(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class NodeSpec:
    """What one node is: its name, address, data, store (if it seeds one) and peers."""

    name: str
    host: str
    data_dir: Path
    guix_acl: Path | None = None
    bootstrap: list[str] = field(default_factory=list)
    fetch_parallel: int = 2
    store: TestStore | None = None

    def config_text(self) -> str:
        """The node's TOML configuration: every listener on its own address, port 0."""
        no_store = self.data_dir / "no-store"
        store_root = self.store.store_root if self.store else no_store
        db = self.store.db_path if self.store else self.data_dir / "no-db.sqlite"
        acl = self.guix_acl or self.data_dir / "no-acl"
        bootstrap = ", ".join(_toml_string(b) for b in self.bootstrap)
        return "\n".join(
            [
                "[node]",
                f"data_dir = {_toml_string(self.data_dir)}",
                f"host_name = {_toml_string(self.name)}",
                "[store]",
                f"store_root = {_toml_string(store_root)}",
                f"db = {_toml_string(db)}",
                "db_poll_interval = 0.5",
                "[guix_endpoint]",
                f'listen = "{self.host}:0"',
                "miss_timeout = 5",
                "[admin]",
                f'listen = "{self.host}:0"',
                "[peer]",
                f'listen = "{self.host}:0"',
                f"fetch_parallel = {self.fetch_parallel}",
                "[dht]",
                f'listen = "{self.host}:0"',
                f"bootstrap = [{bootstrap}]",
                "rpc_timeout = 0.5",
                "[trust]",
                f"guix_acl = {_toml_string(acl)}",
                "[cache]",
                "zstd_threads = 1",
                "",
            ]
        )


class NodeProcess:
    """One `p2pcache serve` process and what it said about itself in its log."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = spec.data_dir.parent / f"{spec.name}.toml"
        self.log_path = spec.data_dir.parent / f"{spec.name}.log"
        self.process: subprocess.Popen | None = None
        self.guix_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.dht_address: tuple[str, int] | None = None
        self.peer_url = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def data_dir(self) -> Path:
        return self.spec.data_dir

    def write_config(self) -> None:
        self.config_path.write_text(self.spec.config_text())

    def publish_all(self) -> subprocess.Popen:
        """`p2pcache publish --all` for this node's store (the caller waits for it)."""
        self.write_config()
        log = open(self.spec.data_dir.parent / f"{self.name}-publish.log", "wb")  # noqa: SIM115
        try:
            return subprocess.Popen(
                p2pcache_command("publish", "--config", str(self.config_path), "--all"),
                cwd=REPO_ROOT,
                preexec_fn=_die_with_parent,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def start(self) -> None:
        self.write_config()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                p2pcache_command("serve", "--config", str(self.config_path)),
                cwd=REPO_ROOT,
                preexec_fn=_die_with_parent,
                env=node_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str) -> NodeFailed:
        tail = "\n".join(self.log_text().splitlines()[-30:])
        return NodeFailed(f"node {self.name} {what}; the end of its log:\n{tail}")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node serves, and read its addresses from its log."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            ready = _READY.search(text)
            if ready:
                network = _NETWORK.search(text)
                if network is None:
                    raise self._failure("started without a DHT")
                self.guix_address = _split(ready["guix"])
                self.admin_address = _split(ready["admin"])
                self.dht_address = _split(network["dht"])
                self.peer_url = network["peer"]
                return
            if self.process.poll() is not None:
                raise self._failure(f"exited with status {self.process.returncode}")
            time.sleep(0.05)
        raise self._failure(f"was not ready within {timeout} s")

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies at once, mid-whatever, as on a power cut."""
        if self.is_running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_GRACE)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_GRACE)

    @property
    def admin_url(self) -> str:
        assert self.admin_address is not None
        return f"http://{self.admin_address[0]}:{self.admin_address[1]}"

    async def metrics(self, session: aiohttp.ClientSession) -> Metrics:
        async with session.get(f"{self.admin_url}/metrics") as response:
            assert response.status == 200, response.status
            return Metrics(await response.text())

    async def status(self, session: aiohttp.ClientSession) -> dict:
        async with session.get(f"{self.admin_url}/api/v1/status") as response:
            assert response.status == 200, response.status
            return await response.json()

    async def health(self, session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.get(f"{self.admin_url}/healthz") as response:
            return response.status, await response.text()


class Metrics:
    """A /metrics scrape: sample values summed over the labels a caller does not name."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )


class NodeCluster:
    """Nodes under one directory; closing it stops (then kills) every process it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProcess] = []

    def add(self, spec: NodeSpec) -> NodeProcess:
        node = NodeProcess(spec)
        self.nodes.append(node)
        return node

    def signing_key(self, node: NodeProcess) -> GuixPublicKey:
        """The node's Guix key (created now, as the node would on its first start)."""
        public = node.data_dir / "signing-key.pub"
        if not public.exists():
            write_key_pair(node.data_dir)
        return parse_public_key(public.read_bytes())

    def start(self, nodes: list[NodeProcess]) -> None:
        """Start these nodes at once and wait until each serves."""
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()

    def close(self) -> None:
        for node in self.nodes:
            if node.is_running:
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.stop()
            finally:
                node.kill()

    def __enter__(self) -> NodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[NodeProcess]:
        return iter(self.nodes)


def publish_all(nodes: list[NodeProcess], timeout: float = 120.0) -> None:
    """Run `p2pcache publish --all` for each node at once; fail with its log if one fails."""
    running = [(node, node.publish_all()) for node in nodes]
    try:
        for node, process in running:
            status = process.wait(timeout)
            if status != 0:
                log = (node.data_dir.parent / f"{node.name}-publish.log").read_text()
                raise NodeFailed(f"publish for {node.name} exited with {status}:\n{log[-3000:]}")
    finally:
        for _, process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
