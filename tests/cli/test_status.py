"""`p2pcache status` against running nodes, its wording, and its error when none runs."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

from p2pcache.cli.status import human_bytes, human_duration, render_status
from tests.cli.run import p2pcache
from tests.integration.status_scenario import status_story

REPO = Path(__file__).resolve().parents[2]


async def status_command(node, *extra: str) -> str:
    admin = f"{node.config.admin_listen.host}:{node.admin_port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pcache", "status", "--admin", admin, *extra,
        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err
    return out.decode()


async def test_status_reports_peers_cache_hits_transfers_and_failures(tmp_path, small_test_store):
    async with status_story(tmp_path, small_test_store) as story:
        answer = json.loads(await status_command(story.node, "--json"))
        text = await status_command(story.node)
        seed_text = await status_command(story.seed)
        seed_answer = json.loads(await status_command(story.seed, "--json"))
        guix_url = f"http://{story.node.config.listen.host}:{story.node.guix_port}"

    node = story.node
    assert answer["identity"]["node_id"] == node.network.identity.node_id.hex()
    assert answer["endpoints"]["guix"] == guix_url
    assert answer["endpoints"]["peer"] == node.network.peer_url
    assert answer["narinfo"] == {"hits": 1, "misses": 2, "hit_ratio": 0.3333}
    assert answer["peers"]["known"] == 1
    assert [p["url"] for p in answer["peers"]["scored"]] == [story.seed.network.peer_url]
    transfer = answer["transfers"]["recent"][0]
    assert (transfer["item"], transfer["source"], transfer["outcome"]) == (
        story.fetched,
        "peers",
        "ok",
    )
    assert answer["cache"]["size_bytes"] > 0
    # The text says the same, in words.
    assert node.network.identity.node_id.hex() in text
    assert "narinfo hit ratio: 33.3 % (1 hits, 2 misses)" in text
    assert f"{story.fetched} from peers: " in text
    assert story.seed.network.peer_url in text
    assert "Verification failures: 0" in text
    # The seed saw its damaged store item refused (when serving it, and again when baking it).
    failures = seed_answer["verification_failures"]
    assert {(f["check"], f["item"]) for f in failures["recent"]} == {
        ("store_nar_hash", story.damaged)
    }
    assert failures["counts"]["store_nar_hash"] == len(failures["recent"]) >= 1
    assert f"Verification failures: {len(failures['recent'])}" in seed_text
    assert f"store_nar_hash {story.damaged} from local store" in seed_text


def test_status_says_when_no_node_is_running():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    result = p2pcache("status", "--admin", f"127.0.0.1:{port}")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert f"no p2pcache node is running with its admin listener at 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_status_reads_the_admin_address_from_the_config_file(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "p2pcache.toml"
    config.write_text(f'[admin]\nlisten = "127.0.0.1:{port}"\n')
    result = p2pcache("status", "--config", str(config))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr.decode()


def test_human_units():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(20 << 30) == "20.0 GiB"
    assert human_duration(59) == "59 s"
    assert human_duration(3725) == "1 h 2 min"
    assert human_duration(2 * 86400 + 7200) == "2 d 2 h"


def test_a_node_without_peer_network_or_traffic_renders():
    text = render_status(
        {"version": "1", "uptime_seconds": 5, "cache": {"max_size_bytes": 1024}}, now=0
    )
    assert "narinfo hit ratio: no requests yet" in text
    assert "Recent transfers (none yet)" in text
