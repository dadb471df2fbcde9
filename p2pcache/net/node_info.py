"""Signed node information (protocol/peer-api.md, `GET /p2p/v1/node`): who answers here.

Pure: build a signed document from an identity, check one received from a peer. The signature
covers the canonical JSON of every other field, with a domain string in front, so it cannot
be taken for a signature over anything else the identity signs (DHT records, attestations).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from p2pcache.errors import FormatError
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.provider_record import node_id_of

DOMAIN = b"p2pcache-node-info-v1\0"
VERSION = 1
MAX_NODE_INFO_SIZE = 4096
_FIELDS = {"version", "node_id", "public_key", "software", "peer_url", "time", "signature"}


class NodeInfoError(FormatError):
    """A node information document is malformed, oversized or wrongly signed."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: bytes
    public_key: bytes
    software: str
    peer_url: str
    time: int


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_node_info(identity: NodeIdentity, software: str, peer_url: str, now: int) -> bytes:
    fields = {
        "version": VERSION,
        "node_id": identity.node_id.hex(),
        "public_key": identity.public_key.hex(),
        "software": software,
        "peer_url": peer_url,
        "time": int(now),
    }
    signature = identity.signing_key.sign(DOMAIN + _canonical(fields)).signature
    return _canonical(fields | {"signature": signature.hex()})


def verify_node_info(data: bytes) -> NodeInfo:
    """Parse and check a node information document; raises NodeInfoError."""
    if len(data) > MAX_NODE_INFO_SIZE:
        raise NodeInfoError(f"node info is {len(data)} bytes, more than {MAX_NODE_INFO_SIZE}")
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise NodeInfoError("node info is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise NodeInfoError("node info does not have exactly the version 1 fields")
    if fields["version"] != VERSION:
        raise NodeInfoError(f"node info version {fields['version']!r} is not supported")
    try:
        public_key = bytes.fromhex(fields["public_key"])
        node_id = bytes.fromhex(fields["node_id"])
        signature = bytes.fromhex(fields["signature"])
    except (TypeError, ValueError):
        raise NodeInfoError("node info has a field that is not hex") from None
    if len(public_key) != 32 or len(signature) != 64 or node_id != node_id_of(public_key):
        raise NodeInfoError("node info key, id or signature has the wrong shape")
    for name in ("software", "peer_url"):
        if not isinstance(fields[name], str):
            raise NodeInfoError(f"node info {name} is not text")
    if isinstance(fields["time"], bool) or not isinstance(fields["time"], int):
        raise NodeInfoError("node info time is not an integer")
    signed = {k: v for k, v in fields.items() if k != "signature"}
    try:
        nacl.signing.VerifyKey(public_key).verify(DOMAIN + _canonical(signed), signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise NodeInfoError("node info signature does not verify") from None
    return NodeInfo(node_id, public_key, fields["software"], fields["peer_url"], fields["time"])
