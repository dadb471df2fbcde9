"""`p2pcache attest` as a builder runs it: evidence rule, --force, --all, idempotence, baking."""

import asyncio

from p2pcache.cache.index import CacheIndex
from p2pcache.net.identity import load_or_create_identity
from p2pcache.testing.build_logs import write_build_log
from p2pcache.trust.attestation import Evidence, parse_attestation
from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.builder_log import BuilderLog, hash_part_of
from p2pcache.trust.checkpoint import verify_checkpoint
from tests.cli.run import p2pcache


def args(tmp_path, store):
    return [
        "--data-dir", str(tmp_path / "data"),
        "--store-root", str(store.store_root),
        "--db", str(store.db_path),
        "--build-log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip


def built_here(tmp_path, store, count):
    """Write build logs for the first `count` derivations that have built outputs."""
    drvs = list(dict.fromkeys(i.deriver for i in store.items if i.deriver))[:count]
    for drv in drvs:
        write_build_log(tmp_path / "logs", drv)
    return [i for i in store.items if i.deriver in drvs]


def log_state(tmp_path):
    identity = load_or_create_identity(tmp_path / "data")
    with BuilderLog.open(tmp_path / "data", identity.signing_key) as log:
        entries = [parse_attestation(log.log.leaf(i)).attestation for i in range(log.size)]
        checkpoint = log.bundles.latest_own_checkpoint()
        bundles = {e.store_path: log.own_bundle(hash_part_of(e.store_path)) for e in entries}
    return identity, entries, checkpoint, bundles


async def baked(tmp_path, path):
    async with CacheIndex(tmp_path / "data" / "index.sqlite") as index:
        item = index.get(hash_part_of(path))
        return item is not None and item.is_baked


def test_attest_all_signs_exactly_what_was_built_here_and_bakes_it(tmp_path, small_test_store):
    built = built_here(tmp_path, small_test_store, 2)
    r = p2pcache("attest", "--all", *args(tmp_path, small_test_store))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert f"{len(built)} attested, 0 already attested" in out
    assert f"{len(small_test_store.items) - len(built)} of {len(small_test_store.items)}" in out
    assert b"attesting: " in r.stderr  # progress (a sentence when not on a terminal)
    identity, entries, checkpoint, bundles = log_state(tmp_path)
    assert {e.store_path for e in entries} == {i.path for i in built}
    assert all(e.evidence is Evidence.BUILD_LOG for e in entries)
    cp = verify_checkpoint(checkpoint.note, identity.public_key)
    assert cp.size == len(built)
    for path, bundle in bundles.items():
        verify_bundle(parse_bundle(bundle), identity.public_key, path)
        assert asyncio.run(baked(tmp_path, path))
    again = p2pcache("attest", "--all", *args(tmp_path, small_test_store))
    assert again.returncode == 0, again.stderr
    assert f"0 attested, {len(built)} already attested" in again.stdout.decode()
    assert log_state(tmp_path)[3] == bundles  # nothing appended, same checkpoint


def test_a_named_item_without_a_build_log_is_refused_unless_forced(tmp_path, small_test_store):
    item = next(i for i in small_test_store.items if i.deriver)
    r = p2pcache("attest", item.path, *args(tmp_path, small_test_store))
    assert r.returncode == 1
    assert b"not attested" in r.stderr and b"--force" in r.stderr
    assert b"Traceback" not in r.stderr
    assert log_state(tmp_path)[1] == []
    forced = p2pcache("attest", "--force", item.path, *args(tmp_path, small_test_store))
    assert forced.returncode == 0, forced.stderr
    assert b"(forced)" in forced.stdout
    (entry,) = log_state(tmp_path)[1]
    assert entry.store_path == item.path and entry.evidence is Evidence.FORCED


def test_force_with_all_is_refused(tmp_path, small_test_store):
    r = p2pcache("attest", "--all", "--force", *args(tmp_path, small_test_store))
    assert r.returncode == 1
    assert b"--force applies to named store paths only" in r.stderr
    assert not (tmp_path / "data" / "trust").exists()


def test_an_unknown_path_is_one_line_and_exit_1(tmp_path, small_test_store):
    r = p2pcache("attest", "/gnu/store/" + "0" * 32 + "-nope", *args(tmp_path, small_test_store))
    assert r.returncode == 1
    assert b"is not a valid path" in r.stderr and r.stderr.count(b"\n") == 1
