"""`p2pcache attest` as a builder runs it: evidence rule, --force, --all, idempotence, baking."""

import asyncio
import time

import pytest

from p2pcache.cache.index import CacheIndex
from p2pcache.net.identity import load_or_create_identity
from p2pcache.testing.build_logs import write_build_log
from p2pcache.testing.guix_stand_in import stand_in_calls, write_guix_stand_in
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


# --check: Guix cannot be installed on this machine, so the `guix` these tests run is a
# stand-in (p2pcache/testing/guix_stand_in.py) that answers as Guix documents `guix build
# --check` does. The real `guix build --check` has not been run by them.


def one_per_derivation(store, count):
    first = {}
    for info in store.items:
        if info.deriver is not None:
            first.setdefault(info.deriver, info)
    return list(first.values())[:count]


def guix_stand_in(tmp_path, store, modes):
    items = {i.deriver.rsplit("/", 1)[-1]: {"mode": m, "output": i.path} for i, m in modes.items()}
    return write_guix_stand_in(tmp_path / "bin", items, store.db_path)


def test_check_without_guix_is_one_clear_line_and_nothing_done(tmp_path, small_test_store):
    item = one_per_derivation(small_test_store, 1)[0]
    (tmp_path / "empty").mkdir()
    r = p2pcache(
        "attest", "--check", item.path, *args(tmp_path, small_test_store),
        env={"PATH": str(tmp_path / "empty")},
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith(b"p2pcache: cannot run guix: 'guix' not found on PATH")
    assert r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()


def test_check_attests_only_what_the_rebuild_reproduced(tmp_path, small_test_store):
    good, bad = one_per_derivation(small_test_store, 2)
    guix = guix_stand_in(tmp_path, small_test_store, {good: "reproduce", bad: "differ"})
    r = p2pcache(
        "attest", "--check", "--guix", str(guix), good.path, bad.path,
        *args(tmp_path, small_test_store),
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    out, err = r.stdout.decode(), r.stderr.decode()
    assert f"attested {good.path} (check), log entry 0" in out
    assert "1 attested, 0 already attested, 1 refused" in out
    assert f"p2pcache: {bad.path} not attested: rebuilding {bad.deriver} gave different" in err
    assert f"p2pcache: checking 1/2: {good.path}" in err and "checked 2/2" in err
    assert f"  guix: building {good.deriver}..." in err  # guix's stderr, relayed
    assert [c["args"][-1] for c in stand_in_calls(guix)] == [good.deriver, bad.deriver]
    identity, entries, _, bundles = log_state(tmp_path)
    (entry,) = entries
    assert entry.store_path == good.path and entry.evidence is Evidence.CHECK
    assert entry.nar_hash == good.nar_sha256
    verify_bundle(parse_bundle(bundles[good.path]), identity.public_key, good.path)
    assert asyncio.run(baked(tmp_path, good.path))
    assert not asyncio.run(baked(tmp_path, bad.path))  # refused before baking
    again = p2pcache(
        "attest", "--check", "--guix", str(guix), good.path, *args(tmp_path, small_test_store)
    )
    assert again.returncode == 0, again.stderr
    assert f"{good.path} is already attested (check), log entry 0" in again.stdout.decode()


def test_check_replaces_a_forced_word_with_a_better_one(tmp_path, small_test_store):
    (item,) = one_per_derivation(small_test_store, 1)
    forced = p2pcache("attest", "--force", item.path, *args(tmp_path, small_test_store))
    assert forced.returncode == 0, forced.stderr
    guix = guix_stand_in(tmp_path, small_test_store, {item: "reproduce"})
    r = p2pcache(
        "attest", "--check", "--guix", str(guix), item.path, *args(tmp_path, small_test_store)
    )
    assert r.returncode == 0, r.stderr
    assert f"attested {item.path} (check), log entry 1" in r.stdout.decode()
    assert [e.evidence for e in log_state(tmp_path)[1]] == [Evidence.FORCED, Evidence.CHECK]


def test_check_settings_come_from_the_configuration_file(tmp_path, small_test_store):
    (item,) = one_per_derivation(small_test_store, 1)
    guix = guix_stand_in(tmp_path, small_test_store, {item: "hang"})
    config = tmp_path / "p2pcache.toml"
    config.write_text(f'[builder]\nguix = "{guix}"\ncheck_timeout = 1\n')
    started = time.monotonic()
    r = p2pcache(
        "attest", "--config", str(config), "--check", item.path, *args(tmp_path, small_test_store)
    )
    assert r.returncode == 1
    assert time.monotonic() - started < 60
    assert f"took too long (killed: building {item.deriver}...); raise --check-timeout" in (
        r.stderr.decode()
    )
    assert stand_in_calls(guix)[0]["args"][4] == "--timeout=1"
    assert log_state(tmp_path)[1] == []


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--all", "--check"], b"--check applies to named store paths only"),
        (["--check", "--force", "/gnu/store/x"], b"--check and --force do not go together"),
    ],
)
def test_check_with_all_or_force_is_refused(tmp_path, small_test_store, flags, words):
    r = p2pcache("attest", *flags, *args(tmp_path, small_test_store))
    assert r.returncode == 1
    assert words in r.stderr
    assert not (tmp_path / "data").exists()
