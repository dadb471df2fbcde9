"""A single node serving a generated Guix store to a Guix-style client, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import shutil
import sqlite3
import subprocess

import pytest

from p2pcache.cache.index import State
from p2pcache.guix.nar import dump_nar
from p2pcache.guix.narinfo import parse_nar_hash, parse_narinfo
from p2pcache.guix.narinfo_signature import SignatureStatus, verify_narinfo
from p2pcache.guix.signing_key import parse_public_key
from p2pcache.testing import add_items
from tests import guix_client
from tests.conftest import require_binary
from tests.integration.conftest import node_config, running_node

HOST = "127.0.0.1"
UNKNOWN = ["0" * 32, "1" * 32, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"]


def hash_part(path: str) -> str:
    return path.rsplit("/", 1)[-1][:32]


def nar_bytes(test_store, item) -> bytes:
    out = io.BytesIO()
    dump_nar(test_store.real_path(item.path), out)
    return out.getvalue()


async def test_pipelined_batch_is_answered_in_order(node, test_store):
    """Guix writes up to 1000 requests at once and reads the answers back in order."""
    wanted = [hash_part(i.path) for i in test_store.items]
    batch = []
    for i, h in enumerate(wanted):
        batch.append(h)
        if i % 100 == 0:
            batch.append(UNKNOWN[i % len(UNKNOWN)])
    replies = await guix_client.narinfos(HOST, node.guix_port, batch)
    assert len(replies) == len(batch)
    assert node.network.counters.misses == {"inconclusive": len(UNKNOWN)}
    for requested, reply in zip(batch, replies, strict=True):
        if requested in UNKNOWN:
            assert reply.status == 404
            # A node with no peer and no upstream cannot tell that an item is absent.
            assert reply.headers["cache-control"] == f"max-age={node.config.undecided_ttl}"
            continue
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/x-nix-narinfo"
        assert reply.headers["cache-control"] == f"max-age={node.config.narinfo_ttl}"
        narinfo = parse_narinfo(reply.body)
        assert hash_part(narinfo.store_path) == requested
        info = test_store.by_hash_part(requested)
        assert parse_nar_hash(narinfo.nar_hash) == info.nar_sha256
        assert narinfo.nar_size == info.nar_size
        assert narinfo.references == tuple(r.rsplit("/", 1)[-1] for r in info.references)


async def test_narinfos_verify_with_the_node_key(node, test_store, oracle, tmp_path):
    key_file = node.config.data_dir / "signing-key.pub"
    key = parse_public_key(key_file.read_bytes())
    items = test_store.items[:5]
    replies = await guix_client.narinfos(HOST, node.guix_port, [hash_part(i.path) for i in items])
    for n, reply in enumerate(replies):
        assert verify_narinfo(reply.body, [key]) is SignatureStatus.VALID
        f = tmp_path / f"{n}.narinfo"
        f.write_bytes(reply.body)
        verdict = subprocess.run(
            [str(oracle), "verify", str(f), str(key_file)], capture_output=True
        )
        assert verdict.stdout.decode().strip() == "valid-signature", verdict.stderr


async def test_unbaked_item_is_streamed_then_baked_and_offered_as_zstd(node, test_store):
    item = max(test_store.items, key=lambda i: i.nar_size)
    h, base = hash_part(item.path), item.path.rsplit("/", 1)[-1]
    first = (await guix_client.narinfos(HOST, node.guix_port, [h]))[0]
    urls = parse_narinfo(first.body).urls
    assert [(u.compression, u.file_size) for u in urls] == [("none", item.nar_size)]
    nar = await guix_client.get(HOST, node.guix_port, f"/nar/{base}")
    assert nar.status == 200 and nar.complete
    assert hashlib.sha256(nar.body).digest() == item.nar_sha256
    await node.publisher.wait_idle(30)
    assert node.index.get(h).state is State.BAKED
    second = parse_narinfo((await guix_client.narinfos(HOST, node.guix_port, [h]))[0].body)
    assert [u.compression for u in second.urls] == ["zstd", "none"]
    zstd = await guix_client.get(HOST, node.guix_port, f"/nar/zstd/{base}")
    assert zstd.status == 200 and len(zstd.body) == second.urls[0].file_size
    again = await guix_client.get(HOST, node.guix_port, f"/nar/{base}")
    assert hashlib.sha256(again.body).digest() == item.nar_sha256


async def test_zstd_nar_decodes_with_guix_decoder_and_restores_with_nix(
    node, test_store, tmp_path, nix_store
):
    require_binary("zstd", "zstd")
    require_binary("guile-3.0", "guile-3.0 guile-zstd")
    item = max(test_store.items, key=lambda i: i.nar_size)
    base = item.path.rsplit("/", 1)[-1]
    job = node.publisher._job(test_store.by_path(item.path))
    await node.publisher.bake(job)
    reply = await guix_client.get(HOST, node.guix_port, f"/nar/zstd/{base}")
    compressed = tmp_path / "nar.zst"
    compressed.write_bytes(reply.body)
    expected = nar_bytes(test_store, item)
    by_zstd = subprocess.run(["zstd", "-d", "-c", str(compressed)], capture_output=True, check=True)
    assert by_zstd.stdout == expected
    script = (
        "(use-modules (zstd) (ice-9 binary-ports))"
        '(define z (make-zstd-input-port (open-file (cadr (command-line)) "rb")))'
        "(put-bytevector (current-output-port) (get-bytevector-all z))"
    )
    guile = subprocess.run(
        ["guile-3.0", "--no-auto-compile", "-c", script, str(compressed)], capture_output=True
    )
    if guile.returncode != 0 and b"no code for module (zstd)" in guile.stderr:
        from tests.conftest import missing_tool

        missing_tool("guile-zstd not found; install it with: apt-get install guile-zstd")
    assert guile.returncode == 0, guile.stderr
    assert guile.stdout == expected
    restored = tmp_path / "restored"
    subprocess.run([nix_store, "--restore", str(restored)], input=expected, check=True)
    redumped = subprocess.run([nix_store, "--dump", str(restored)], capture_output=True, check=True)
    assert redumped.stdout == expected


async def test_two_hundred_concurrent_clients(node, test_store):
    items = test_store.items
    small = [i for i in items if i.nar_size < 200_000][:20]

    async def client(n: int) -> None:
        batch = [hash_part(items[(n * 7 + k) % len(items)].path) for k in range(10)]
        replies = await guix_client.narinfos(HOST, node.guix_port, batch)
        assert [hash_part(parse_narinfo(r.body).store_path) for r in replies] == batch
        item = small[n % len(small)]
        nar = await guix_client.get(HOST, node.guix_port, f"/nar/{item.path.rsplit('/', 1)[-1]}")
        assert hashlib.sha256(nar.body).digest() == item.nar_sha256

    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(200))), 120)


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/" + "0" * 31 + ".narinfo", {404}),
        ("/" + "e" * 32 + ".narinfo", {404}),
        ("/../../etc/passwd", {404}),
        ("/nar/../../etc/passwd", {404}),
        ("/nar/%2e%2e/%2e%2e/etc/passwd", {404}),
        ("/nar/zstd/..%2F..%2Findex.sqlite", {400}),
        ("/nar/%2Fetc%2Fpasswd", {400}),
        ("//etc/passwd", {404}),
        ("/nar//etc/passwd", {404}),
        ("/nar/zstd/" + "0" * 32 + "-x", {404}),
        ("/nar/gzip/" + "0" * 32 + "-x", {404}),
        ("/nar/" + "0" * 32 + "-x/../../../etc/passwd", {404}),
        ("/signing-key.sec", {404}),
        ("/index.sqlite", {404}),
        ("/nar/%00", {400}),
        ("/%ff.narinfo", {400}),
        ("/nix-cache-info/../signing-key.sec", {404}),
    ],
)
async def test_malformed_and_traversal_paths(node, path, statuses):
    reply = await guix_client.get(HOST, node.guix_port, path)
    assert reply.status in statuses
    assert len(reply.body) < 200
    assert b"Traceback" not in reply.body and b"BEGIN" not in reply.body


async def test_nar_under_another_name_is_not_served(node, test_store):
    item = test_store.items[0]
    h = hash_part(item.path)
    reply = await guix_client.get(HOST, node.guix_port, f"/nar/{h}-not-its-name")
    assert reply.status == 404


async def test_head_requests_carry_length_and_no_body(node, test_store):
    item = test_store.items[0]
    base = item.path.rsplit("/", 1)[-1]
    paths = ["/nix-cache-info", "/signing-key.pub", f"/{base[:32]}.narinfo", f"/nar/{base}"]
    gets = await guix_client.pipelined_get(HOST, node.guix_port, paths)
    heads = await guix_client.pipelined_get(HOST, node.guix_port, paths, method="HEAD")
    for g, h in zip(gets, heads, strict=True):
        assert h.status == g.status == 200
        assert int(h.headers["content-length"]) == len(g.body)
        assert h.body == b""


async def test_cache_info_and_signing_key(node):
    info = await guix_client.get(HOST, node.guix_port, "/nix-cache-info")
    assert info.body == b"StoreDir: /gnu/store\nWantMassQuery: 0\nPriority: 100\n"
    key = await guix_client.get(HOST, node.guix_port, "/signing-key.pub")
    assert key.body == (node.config.data_dir / "signing-key.pub").read_bytes()


async def test_corrupt_store_item_is_cut_and_never_served_again(tmp_path, small_test_store):
    item = max(small_test_store.items, key=lambda i: i.nar_size)
    source = small_test_store.real_path(item.path)
    files = [p for p in [source, *source.rglob("*")] if p.is_file() and not p.is_symlink()]
    files[0].write_bytes(b"X" + files[0].read_bytes()[1:])  # same size, different bytes
    config = node_config(tmp_path / "node", small_test_store, bake_new_items=False)
    async with running_node(config) as node:
        base = item.path.rsplit("/", 1)[-1]
        reply = await guix_client.get(HOST, node.guix_port, f"/nar/{base}")
        assert reply.status == 200 and not reply.complete
        assert len(reply.body) < item.nar_size
        for _ in range(100):
            if node.index.get(base[:32]).state is State.CORRUPT:
                break
            await asyncio.sleep(0.05)
        assert node.index.get(base[:32]).state is State.CORRUPT
        again = await guix_client.narinfos(HOST, node.guix_port, [base[:32]])
        assert again[0].status == 404
        corrupt = node.metrics.registry.get_sample_value("p2pcache_store_corrupt_items_total")
        assert corrupt >= 1


async def test_a_store_item_collected_as_garbage_is_a_404_and_forgotten(tmp_path, small_test_store):
    """`guix gc` removed an item the node had published but not baked: Guix gets a 404 for
    its NAR (and tries its next URL), and the node no longer offers it."""
    gone, kept = sorted(small_test_store.items, key=lambda i: i.nar_size)[:2]
    config = node_config(tmp_path / "node", small_test_store, bake_new_items=False)
    async with running_node(config) as node:
        base = gone.path.rsplit("/", 1)[-1]
        assert node.index.get(base[:32]) is not None
        [before] = await guix_client.narinfos(HOST, node.guix_port, [base[:32]])
        assert before.status == 200
        # What `guix gc` does: the database row goes, then the files.
        with contextlib.closing(sqlite3.connect(small_test_store.db_path)) as db, db:
            (row,) = db.execute("SELECT id FROM ValidPaths WHERE path = ?", (gone.path,))
            db.execute("DELETE FROM Refs WHERE referrer = ? OR reference = ?", (row[0], row[0]))
            db.execute("DELETE FROM ValidPaths WHERE id = ?", (row[0],))
        shutil.rmtree(small_test_store.real_path(gone.path), ignore_errors=True)
        small_test_store.real_path(gone.path).unlink(missing_ok=True)  # a file item
        reply = await guix_client.get(HOST, node.guix_port, f"/nar/{base}")
        assert reply.status == 404
        for _ in range(100):
            if node.index.get(base[:32]) is None:
                break
            await asyncio.sleep(0.02)
        assert node.index.get(base[:32]) is None
        [after] = await guix_client.narinfos(HOST, node.guix_port, [base[:32]])
        assert after.status == 404
        # The rest of the store is served as before.
        other = kept.path.rsplit("/", 1)[-1]
        nar = await guix_client.get(HOST, node.guix_port, f"/nar/{other}")
        assert nar.status == 200 and nar.complete


async def test_a_store_that_is_not_there_forgets_nothing(tmp_path, small_test_store):
    """A store root that is empty or missing (a mount not there yet) is no `guix gc`."""
    config = node_config(tmp_path / "node", small_test_store, bake_new_items=False)
    async with running_node(config) as node:
        item = small_test_store.items[0]
        base = item.path.rsplit("/", 1)[-1]
        hidden = small_test_store.store_root.with_name("hidden-store")
        small_test_store.store_root.rename(hidden)
        try:
            reply = await guix_client.get(HOST, node.guix_port, f"/nar/{base}")
            assert not (reply.status == 200 and reply.complete)
            await asyncio.sleep(0.1)
            assert node.index.get(base[:32]) is not None
        finally:
            hidden.rename(small_test_store.store_root)


async def test_new_store_items_are_noticed_and_baked(tmp_path, small_test_store):
    config = node_config(tmp_path / "node", small_test_store)
    async with running_node(config) as node:
        added = add_items(small_test_store, 3, seed=7)
        h = hash_part(added[-1].path)
        for _ in range(200):
            item = node.index.get(h)
            if item is not None and item.is_baked:
                break
            await asyncio.sleep(0.05)
        assert node.index.get(h).is_baked
        reply = (await guix_client.narinfos(HOST, node.guix_port, [h]))[0]
        assert [u.compression for u in parse_narinfo(reply.body).urls] == ["zstd", "none"]


async def test_node_without_store_still_serves(tmp_path):
    async with running_node(node_config(tmp_path / "node", None)) as node:
        reply = (await guix_client.narinfos(HOST, node.guix_port, ["0" * 32]))[0]
        assert reply.status == 404
        info = await guix_client.get(HOST, node.guix_port, "/nix-cache-info")
        assert info.status == 200
