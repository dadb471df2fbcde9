"""The DHT's neighbours on disk, as JSON, so a restarted node rejoins without a bootstrap.

kademlia's save_state/load_state use pickle, which runs code from the file; this is plain
data. The file is rewritten atomically (temporary file, fsync, rename) and read with a size
bound; a damaged or foreign file is ignored with a log line (the node then joins through its
configured bootstrap peers), never trusted.

    {"format": "p2pcache-dht-neighbours-v1", "node_id": "<40 hex>",
     "neighbours": [{"id": "<40 hex>", "host": "192.0.2.7", "port": 8083}, ...]}
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from kademlia.node import Node

from p2pcache.net.dht_protocol import usable_address

log = logging.getLogger(__name__)

STATE_FORMAT = "p2pcache-dht-neighbours-v1"
MAX_STATE_SIZE = 1 << 20  # a few hundred neighbours take about 30 kB
MAX_NEIGHBOURS = 1000


def save_neighbours(path: Path, node_id: bytes, neighbours: Iterable[Node]) -> None:
    """Write the neighbours to `path` atomically."""
    document = {
        "format": STATE_FORMAT,
        "node_id": node_id.hex(),
        "neighbours": [
            {"id": n.id.hex(), "host": n.ip, "port": n.port}
            for n in list(neighbours)[:MAX_NEIGHBOURS]
        ],
    }
    data = json.dumps(document, indent=1).encode("utf-8") + b"\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_neighbours(path: Path) -> list[tuple[str, int]]:
    """The (host, port) of each neighbour saved in `path`; [] if missing or unusable."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE_SIZE + 1)
    except FileNotFoundError:
        return []
    except OSError as error:
        log.warning("could not read the DHT neighbours file %s (%s); ignoring it", path, error)
        return []
    try:
        if len(data) > MAX_STATE_SIZE:
            raise ValueError("the file is larger than any neighbours file")
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise ValueError(f"the format is not {STATE_FORMAT}")
        entries = document.get("neighbours")
        if not isinstance(entries, list):
            raise ValueError("it has no neighbours list")
    except ValueError as error:
        log.warning("ignoring the DHT neighbours file %s: %s", path, error)
        return []
    addresses = []
    for entry in entries[:MAX_NEIGHBOURS]:
        if not isinstance(entry, dict):
            continue
        host, port = entry.get("host"), entry.get("port")
        if not isinstance(host, str) or type(port) is not int or not 0 < port < 65536:
            continue
        address = usable_address(host)
        if address is not None:
            addresses.append((address, port))
    return addresses
