"""The peer API's log and attestation endpoints over real sockets: what is served verifies."""

import asyncio
import logging
import socket
import struct

import aiohttp
import pytest

from p2pcache.cache.chunk_table import decode_chunk_table
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.peer_client import PeerClient
from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.bundle_list import parse_bundle_list
from p2pcache.trust.checkpoint import verify_checkpoint
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_proof import verify_consistency, verify_inclusion
from tests.net.peer_servers import builder_server, peer_server
from tests.seeded_cache import seed_cache
from tests.test_fetcher import big_item_fixture  # noqa: F401 (fixture)
from tests.trust.builders import builder_key, hash_part, signed_attestation, store_path

A, B = builder_key("builder a"), builder_key("builder b")
PATHS = [store_path(n) for n in range(5)]


def public(key) -> bytes:
    return bytes(key.verify_key)


@pytest.fixture
def builder_a(tmp_path):
    """Builder A: five attestations, checkpoints at sizes 3 and 5, and B's bundle for item 0."""
    with BuilderLog.open(tmp_path / "a", A) as log:
        log.append([signed_attestation(A, p) for p in PATHS[:3]])
        log.checkpoint()
        log.append([signed_attestation(A, p) for p in PATHS[3:]])
        log.checkpoint()
        with BuilderLog.open(tmp_path / "b", B) as other:
            other.append([signed_attestation(B, PATHS[0])])
            other.checkpoint()
            log.bundles.add_carried(
                hash_part(PATHS[0]), parse_bundle(other.own_bundle(hash_part(PATHS[0])))
            )
        yield log


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_checkpoint_and_proofs_served_verify_against_each_other(tmp_path, builder_a):
    async with builder_server(tmp_path, builder_a, "127.0.12.1") as (url, served):
        status, note = await get(url + "/p2p/v1/log/checkpoint")
        assert status == 200
        newest = verify_checkpoint(note, public(A))
        assert newest.size == 5
        for index in range(5):
            status, body = await get(url + f"/p2p/v1/log/inclusion/{index}/5")
            proof = [body[i : i + 32] for i in range(0, len(body), 32)]
            leaf = leaf_hash(builder_a.log.leaf(index))
            verify_inclusion(index, 5, leaf, proof, newest.root)
        status, body = await get(url + "/p2p/v1/log/consistency/3/5")
        assert status == 200
        proof = [body[i : i + 32] for i in range(0, len(body), 32)]
        three = verify_checkpoint(builder_a.bundles.own_checkpoint(3).note, public(A))
        verify_consistency(3, 5, proof, three.root, newest.root)
    assert served == {"checkpoint": 1, "inclusion": 5, "consistency": 1}


async def test_attestations_are_the_own_bundle_first_then_the_carried_ones(tmp_path, builder_a):
    async with builder_server(tmp_path, builder_a, "127.0.12.2") as (url, served):
        status, body = await get(url + f"/p2p/v1/attestations/{hash_part(PATHS[0])}")
        assert status == 200
        own, carried = (parse_bundle(b) for b in parse_bundle_list(body))
        assert verify_bundle(own, public(A), PATHS[0]).checkpoint.size == 5
        assert verify_bundle(carried, public(B), PATHS[0]).checkpoint.size == 1
        status, body = await get(url + f"/p2p/v1/attestations/{hash_part(PATHS[4])}")
        (only,) = parse_bundle_list(body)
        verify_bundle(parse_bundle(only), public(A), PATHS[4])
    assert served == {"attestations": 3}


@pytest.mark.parametrize(
    "path",
    [
        "/p2p/v1/attestations/" + "0" * 32,  # an item nobody attested
        "/p2p/v1/attestations/" + "E" * 32,
        "/p2p/v1/attestations/short",
        "/p2p/v1/log/inclusion/5/5",  # index beyond the tree
        "/p2p/v1/log/inclusion/0/6",  # a tree the log does not have
        "/p2p/v1/log/inclusion/0/0",
        "/p2p/v1/log/inclusion/01/5",  # not canonical
        "/p2p/v1/log/inclusion/-1/5",
        "/p2p/v1/log/inclusion/0/99999999999999999999",
        "/p2p/v1/log/consistency/0/5",  # from the empty tree: not defined
        "/p2p/v1/log/consistency/5/3",
        "/p2p/v1/log/consistency/3/6",
        "/p2p/v1/log/consistency/x/5",
    ],
)
async def test_what_the_log_cannot_prove_is_a_short_404(tmp_path, builder_a, path):
    async with builder_server(tmp_path, builder_a, "127.0.12.3") as (url, served):
        status, body = await get(url + path)
    assert status == 404 and len(body) < 100
    assert not served


async def test_a_node_with_an_empty_log_or_none_serves_no_trust_data(tmp_path):
    with BuilderLog.open(tmp_path / "empty", A) as empty:
        for builder_log in (empty, None):
            async with builder_server(tmp_path, builder_log, "127.0.12.4") as (url, _):
                for path in (
                    "/p2p/v1/log/checkpoint",
                    "/p2p/v1/log/inclusion/0/1",
                    "/p2p/v1/log/consistency/1/1",
                    f"/p2p/v1/attestations/{hash_part(PATHS[0])}",
                ):
                    assert (await get(url + path))[0] == 404, path


async def test_the_client_fetches_what_a_verifier_needs(tmp_path, builder_a):
    async with (
        builder_server(tmp_path, builder_a, "127.0.12.5") as (url, _),
        aiohttp.ClientSession() as session,
    ):
        client = PeerClient(session)
        newest = verify_checkpoint(await client.fetch_checkpoint(url), public(A))
        bundles = await client.fetch_attestations(url, hash_part(PATHS[2]))
        verified = verify_bundle(parse_bundle(bundles[0]), public(A), PATHS[2])
        proof = await client.fetch_inclusion_proof(url, verified.index, newest.size)
        verify_inclusion(2, 5, leaf_hash(builder_a.log.leaf(2)), proof, newest.root)
        three = verify_checkpoint(builder_a.bundles.own_checkpoint(3).note, public(A))
        consistency = await client.fetch_consistency_proof(url, 3, newest.size)
        verify_consistency(3, 5, consistency, three.root, newest.root)
        assert await client.fetch_consistency_proof(url, 5, 5) == []
        assert await client.fetch_attestations(url, "0" * 32) == []
        assert await client.fetch_inclusion_proof(url, 0, 6) is None
        assert await client.fetch_consistency_proof(url, 3, 9) is None


async def test_entries_logged_without_a_checkpoint_are_served_under_a_fresh_one(tmp_path):
    with BuilderLog.open(tmp_path / "a", A) as log:
        log.append([signed_attestation(A, PATHS[0])])  # an attest run cut short here
        assert log.bundles.latest_own_checkpoint() is None
        async with builder_server(tmp_path, log, "127.0.12.6") as (url, _):
            status, body = await get(url + f"/p2p/v1/attestations/{hash_part(PATHS[0])}")
        assert status == 200
        (bundle,) = parse_bundle_list(body)
        assert verify_bundle(parse_bundle(bundle), public(A), PATHS[0]).checkpoint.size == 1


async def test_a_peer_leaving_in_the_middle_of_frames_is_not_logged_as_an_error(
    tmp_path, big_item, caplog
):
    """A peer that stops reading (it had what it needed, or gave up) is routine: the server
    must not log it as an error of its own, as aiohttp does with an exception it is handed."""
    store, info, _ = big_item
    source = await seed_cache(tmp_path / "peer", store, generate_key_pair(), [info])
    hash_part = info.path.rsplit("/", 1)[-1][:32]
    count = decode_chunk_table(source.index.get(hash_part).chunk_table).count
    caplog.set_level(logging.DEBUG)
    try:
        async with peer_server(source, "127.0.12.9") as url:
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            target = f"/p2p/v1/frames/{hash_part}/0/{count}"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()  # a reset, with megabytes still to send
            for _ in range(100):
                if any("left while sending chunks" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the server never noticed the peer leave")
    finally:
        await source.index.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
