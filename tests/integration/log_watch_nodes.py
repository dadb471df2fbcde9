"""Builder, witness and verifier nodes on loopback for the log-watching tests.

A builder here is a real node whose data directory holds a known identity key and a log of
real signed attestations of made-up items (appended through BuilderLog, as `p2pcache attest`
does beside a running node). Each node gets its own 127.A.B.1 address; a port is picked free
beforehand when another node's configuration must name it before it starts.
"""

from __future__ import annotations

import socket
from pathlib import Path

import nacl.signing

from p2pcache.config import Config, ListenAddress
from p2pcache.net.identity import IDENTITY_FILE, NodeIdentity, render_identity
from p2pcache.trust.builder_log import BUNDLES_FILE, LOG_FILE, TRUST_DIR, BuilderLog
from tests.integration.conftest import node_config
from tests.trust.builders import signed_attestation, store_path


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def peer_config(data_dir: Path, host: str, port: int = 0, **changes) -> Config:
    """A node without a store or DHT whose peer API listens on host:port."""
    return node_config(
        data_dir,
        None,
        listen=ListenAddress(host, 0),
        peer_listen=ListenAddress(host, port),
        dht_listen=None,
        gossip_interval=3600.0,
        witness_interval=3600.0,
        cosignature_interval=3600.0,
        **changes,
    )


def make_builder_dir(data_dir: Path, seed: bytes) -> nacl.signing.SigningKey:
    """A data directory whose identity key is the one made from `seed`."""
    identity = NodeIdentity.from_seed(seed)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / IDENTITY_FILE
    path.write_bytes(render_identity(identity))
    path.chmod(0o600)
    return identity.signing_key


def attest_items(data_dir: Path, key: nacl.signing.SigningKey, items: range, name: str) -> int:
    """Append attestations of made-up items `items` (named `name`) to the builder's log."""
    with BuilderLog.open(data_dir, key) as log:
        log.append([signed_attestation(key, store_path(i, name)) for i in items])
        return log.size


def erase_log(data_dir: Path) -> None:
    """Throw the builder's log away (a builder about to rewrite its history)."""
    for file in (LOG_FILE, BUNDLES_FILE):
        for suffix in ("", "-wal", "-shm"):
            (data_dir / TRUST_DIR / (file + suffix)).unlink(missing_ok=True)
