"""Signed node information: round trip and refusal of tampered or malformed documents."""

import json

import pytest

from p2pcache.net.identity import NodeIdentity
from p2pcache.net.node_info import NodeInfoError, sign_node_info, verify_node_info


def test_round_trip():
    identity = NodeIdentity.generate()
    info = verify_node_info(sign_node_info(identity, "p2pcache 1", "http://127.0.0.2:8081", 5))
    assert info.node_id == identity.node_id and info.peer_url == "http://127.0.0.2:8081"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d | {"peer_url": "http://evil"},
        lambda d: d | {"time": 6},
        lambda d: d | {"node_id": "00" * 20},
        lambda d: d | {"signature": "00" * 64},
        lambda d: d | {"version": 2},
        lambda d: d | {"extra": 1},
        lambda d: {k: v for k, v in d.items() if k != "software"},
        lambda d: d | {"time": True},
        lambda d: d | {"public_key": "zz"},
    ],
)
def test_tampered_or_malformed_documents_are_refused(mutate):
    identity = NodeIdentity.generate()
    doc = json.loads(sign_node_info(identity, "p2pcache 1", "http://127.0.0.2:8081", 5))
    with pytest.raises(NodeInfoError):
        verify_node_info(json.dumps(mutate(doc)).encode())


def test_oversized_and_non_json():
    with pytest.raises(NodeInfoError, match="more than"):
        verify_node_info(b" " * 5000)
    with pytest.raises(NodeInfoError, match="not JSON"):
        verify_node_info(b"\xff\xfe")
