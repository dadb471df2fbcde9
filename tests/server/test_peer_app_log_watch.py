"""The peer API's gossip and witness routes over real sockets: bounded, 404 for anything else."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import pytest

from p2pcache.net.peer_client import PeerClient
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.checkpoint import VerifiedCheckpoint, verify_checkpoint
from p2pcache.trust.checkpoint_list import (
    MAX_CHECKPOINT_LIST_SIZE,
    MAX_LISTED_CHECKPOINTS,
    parse_checkpoint_list,
)
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.witness import Witness, witness_name, witness_verifier
from tests.net.peer_servers import builder_server
from tests.trust.builders import builder_key, signed_attestation, store_path

WITNESS_KEY = builder_key("a witness")


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


@dataclass
class SigningBuilder:
    """A builder's real log that signed a checkpoint at every size."""

    log: BuilderLog

    @property
    def public(self) -> bytes:
        return self.log.public_key

    def checkpoint(self, size: int) -> VerifiedCheckpoint:
        return verify_checkpoint(self.log.bundles.own_checkpoint(size).note, self.public)


@pytest.fixture
def builder(tmp_path):
    key = builder_key("builder one")
    with BuilderLog.open(tmp_path / "builder", key) as log:
        for n in range(12):
            log.append([signed_attestation(key, store_path(n))])
            log.checkpoint()
        yield SigningBuilder(log)


@pytest.fixture
def witness(tmp_path):
    cosigner = Cosigner(witness_name(bytes(WITNESS_KEY.verify_key)), WITNESS_KEY)
    with Witness(tmp_path / "witness.sqlite", cosigner) as w:
        yield w


async def test_the_witness_serves_what_it_cosigned_for_the_log_asked(tmp_path, witness, builder):
    witness.consider(builder.checkpoint(12), None)
    async with builder_server(tmp_path, None, "127.0.13.1", witness=witness) as (url, _):
        async with aiohttp.ClientSession() as session:
            note = await PeerClient(session).fetch_cosigned_checkpoint(url, builder.public)
        verified = verify_checkpoint(
            note,
            builder.public,
            witnesses=[witness_verifier(bytes(WITNESS_KEY.verify_key))],
            required_cosignatures=1,
        )
        assert verified.size == 12
        for path in (
            "/p2p/v1/witness/cosignature/" + "00" * 32,  # a log it does not watch
            "/p2p/v1/witness/cosignature/" + "AB" * 32,  # not canonical hex
            "/p2p/v1/witness/cosignature/" + builder.public.hex()[:-2],
            "/p2p/v1/witness/cosignature/../log/checkpoint",
        ):
            status, body = await get(url + path)
            assert status == 404 and len(body) < 100, path


async def test_a_node_that_is_no_witness_and_gossips_nothing_answers_404(tmp_path, builder):
    async with builder_server(tmp_path, None, "127.0.13.2") as (url, _):
        for path in ("/p2p/v1/checkpoints", f"/p2p/v1/witness/cosignature/{builder.public.hex()}"):
            assert (await get(url + path))[0] == 404
    async with builder_server(tmp_path, None, "127.0.13.3", checkpoint_notes=list) as (url, _):
        assert (await get(url + "/p2p/v1/checkpoints"))[0] == 404  # nothing accepted yet


async def test_the_checkpoint_list_stays_within_its_bounds(tmp_path, builder):
    notes = [builder.checkpoint(n).note for n in range(1, 13)] * 40  # 480 notes
    async with builder_server(tmp_path, None, "127.0.13.4", checkpoint_notes=lambda: notes) as (
        url,
        _,
    ):
        status, body = await get(url + "/p2p/v1/checkpoints")
    assert status == 200 and len(body) <= MAX_CHECKPOINT_LIST_SIZE
    listed = parse_checkpoint_list(body)
    assert listed == notes[:MAX_LISTED_CHECKPOINTS]
