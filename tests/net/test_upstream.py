"""Fetching from an upstream substitute server: narinfos, verdicts, NAR choice, the cache.

Every test talks to a real aiohttp server on 127.0.0.1 (tests/net/upstream_server.py). Hostile
upstreams are in test_upstream_hostile.py.
"""

import io
import itertools
import logging
import subprocess

import aiohttp
import pytest
import zstandard

from p2pcache.cache.chunked_zstd import ChunkedZstdWriter, iter_decompressed
from p2pcache.guix.narinfo import NarURL
from p2pcache.guix.narinfo_signature import SignatureStatus
from p2pcache.guix.signing_key import generate_key_pair, parse_public_key, parse_secret_key
from p2pcache.net.baking_tee import BakeAbandoned
from p2pcache.net.upstream import (
    Refusal,
    UpstreamClient,
    UpstreamError,
    UpstreamUnsupported,
    verify_upstream_narinfo,
)
from tests.net.upstream_server import (  # noqa: F401 (fixtures)
    TEST_TIMEOUTS,
    FakeUpstream,
    client_fixture,
    item_fixture,
    small_item_fixture,
    store_fixture,
    stored_nothing,
    trusted_key_fixture,
    upstream_fixture,
)

# --- narinfos ---------------------------------------------------------------------------------


async def test_narinfo_is_fetched_and_checked(upstream, client, item, trusted_key):
    narinfo = item.publish(upstream, trusted_key)
    info = await client.fetch_narinfo(upstream.url, item.hash_part)
    assert info is not None
    assert info.raw == narinfo
    assert info.store_path.path == item.store_path
    assert info.nar_sha256 == item.sha256
    assert info.nar_size == len(item.nar)
    assert info.cache_url == upstream.url
    assert upstream.requests == [f"/{item.hash_part}.narinfo"]


async def test_unknown_item_is_none(upstream, client, item):
    assert await client.fetch_narinfo(upstream.url, item.hash_part) is None


async def test_server_error_names_the_url(upstream, client, item):
    upstream.serve(f"/{item.hash_part}.narinfo", b"oops", status=500)
    with pytest.raises(UpstreamError, match="answered 500") as caught:
        await client.fetch_narinfo(upstream.url, item.hash_part)
    assert caught.value.url == f"{upstream.url}/{item.hash_part}.narinfo"


async def test_narinfo_redirect_is_not_followed(upstream, client, small_item, trusted_key):
    small_item.publish(upstream, trusted_key)
    upstream.routes["/moved.narinfo"] = upstream.routes.pop(f"/{small_item.hash_part}.narinfo")
    upstream.redirect(f"/{small_item.hash_part}.narinfo", "/moved.narinfo")
    with pytest.raises(UpstreamError, match=r"302 .* not followed for narinfos"):
        await client.fetch_narinfo(upstream.url, small_item.hash_part)
    assert "/moved.narinfo" not in upstream.requests


async def test_unreachable_upstream_is_an_upstream_error(client, small_item):
    server = FakeUpstream()
    await server.start()
    url = server.url
    await server.stop()
    with pytest.raises(UpstreamError, match="cannot fetch"):
        await client.fetch_narinfo(url, small_item.hash_part)


async def test_cache_url_with_a_path_and_a_trailing_slash(
    upstream, client, small_item, trusted_key, store
):
    narinfo = small_item.narinfo(trusted_key, ["zstd"])
    upstream.serve(f"/cache/{small_item.hash_part}.narinfo", narinfo)
    upstream.serve(f"/cache/nar/zstd/{small_item.basename}", small_item.zstd)
    cache = f"{upstream.url}/cache/"
    info = await client.fetch_narinfo(cache, small_item.hash_part)
    await client.fetch_into_cache(cache, info, store)
    assert upstream.requests == [
        f"/cache/{small_item.hash_part}.narinfo",
        f"/cache/nar/zstd/{small_item.basename}",
    ]


# --- verdicts ---------------------------------------------------------------------------------


async def test_signed_narinfo_in_the_current_layout_is_accepted(
    upstream, client, item, trusted_key
):
    item.publish(upstream, trusted_key, ["zstd", "gzip"])
    info = await client.fetch_narinfo(upstream.url, item.hash_part)
    verdict = verify_upstream_narinfo(info, [trusted_key.public])
    assert verdict.is_accepted
    assert verdict.signature is SignatureStatus.VALID
    assert verdict.refusal is None


def unsigned(item, key):
    return item.signed_part() + b"URL: nar/zstd/x\nCompression: zstd\n"


def signed_by_another_key(item, key):
    return item.narinfo(generate_key_pair())


def tampered(item, key):
    narinfo = item.narinfo(key)
    size = str(len(item.nar)).encode()
    return narinfo.replace(b"NarSize: " + size, b"NarSize: " + str(len(item.nar) + 8).encode())


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (unsigned, SignatureStatus.UNSIGNED),
        (signed_by_another_key, SignatureStatus.UNAUTHORIZED_KEY),
        (tampered, SignatureStatus.HASH_MISMATCH),
    ],
    ids=["unsigned", "untrusted-key", "tampered"],
)
async def test_refused_signature_gives_the_verdict_as_reason(
    upstream, client, small_item, trusted_key, make, status
):
    upstream.serve(f"/{small_item.hash_part}.narinfo", make(small_item, trusted_key))
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    verdict = verify_upstream_narinfo(info, [trusted_key.public])
    assert not verdict.is_accepted
    assert verdict.refusal is Refusal.SIGNATURE
    assert verdict.signature is status
    assert status.value in verdict.reason


async def test_old_layout_is_refused_even_with_a_valid_signature(
    upstream, client, small_item, trusted_key
):
    # Old servers put URL/Compression/FileSize before NarHash, inside the signed part.
    old = small_item.signed_part().replace(
        b"NarHash:", b"URL: nar/gzip/x\nCompression: gzip\nFileSize: 10\nNarHash:"
    )
    narinfo = small_item.narinfo(trusted_key, signed_part=old, groups=[])
    upstream.serve(f"/{small_item.hash_part}.narinfo", narinfo)
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    verdict = verify_upstream_narinfo(info, [trusted_key.public])
    assert verdict.signature is SignatureStatus.VALID
    assert verdict.refusal is Refusal.OLD_LAYOUT
    assert not verdict.is_accepted


async def test_narsize_outside_the_signature_is_refused(upstream, client, small_item, trusted_key):
    # Guix does not require NarSize above the signature, but a relay keeps only the signed
    # part: the NarSize below it would be lost.
    size_line = b"NarSize: %d\n" % len(small_item.nar)
    signed = small_item.signed_part().replace(size_line, b"")
    narinfo = small_item.narinfo(trusted_key, signed_part=signed)
    narinfo = narinfo.replace(b"URL:", size_line + b"URL:", 1)
    upstream.serve(f"/{small_item.hash_part}.narinfo", narinfo)
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    assert info.nar_size == len(small_item.nar)
    verdict = verify_upstream_narinfo(info, [trusted_key.public])
    assert verdict.signature is SignatureStatus.VALID
    assert verdict.refusal is Refusal.UNSIGNED_FIELDS


@pytest.mark.interop
async def test_narinfo_signed_by_libgcrypt_is_accepted_and_fetched(
    oracle, vectors_dir, tmp_path, upstream, client, item, store
):
    body = tmp_path / "body"
    trailer = tmp_path / "trailer"
    body.write_bytes(item.signed_part())
    trailer.write_bytes(b"URL: %s\nCompression: gzip\n" % item.nar_url("gzip").encode())
    secret, public = vectors_dir / "test-signing-key.sec", vectors_dir / "test-signing-key.pub"
    signed = subprocess.run(
        [oracle, "sign", secret, public, body, "--host", "ci.test", "--trailer", trailer],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert parse_secret_key(secret.read_bytes()).public == parse_public_key(public.read_bytes())
    upstream.serve(f"/{item.hash_part}.narinfo", signed)
    upstream.serve("/" + item.nar_url("gzip"), item.gzip)

    info = await client.fetch_narinfo(upstream.url, item.hash_part)
    verdict = verify_upstream_narinfo(info, [parse_public_key(public.read_bytes())])
    assert verdict.is_accepted, verdict.reason
    assert info.narinfo.signed_part == item.signed_part()
    result = await client.fetch_into_cache(upstream.url, info, store)
    assert result.summary.sha256 == item.sha256


# --- which NAR --------------------------------------------------------------------------------


async def test_lzip_only_item_is_skipped_with_a_log_line(
    upstream, client, small_item, trusted_key, caplog
):
    small_item.publish(upstream, trusted_key, ["lzip"])
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    line = f"skipping {small_item.store_path}: upstream offers it only as lzip"
    with caplog.at_level(logging.INFO, logger="p2pcache.net"):
        verdict = verify_upstream_narinfo(info, [trusted_key.public])
        assert verdict.refusal is Refusal.NO_USABLE_NAR
        assert caplog.messages == [line]
        caplog.clear()
        with pytest.raises(UpstreamUnsupported, match=line):
            async for _ in client.fetch_nar(upstream.url, info):
                pass
        assert caplog.messages == [line]
    assert upstream.requests == [f"/{small_item.hash_part}.narinfo"]


async def test_zstd_is_preferred_then_gzip_and_lzip_never_fetched(
    upstream, client, small_item, trusted_key, store
):
    small_item.publish(upstream, trusted_key, ["lzip", "none", "gzip", "zstd"])
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    await client.fetch_into_cache(upstream.url, info, store)
    assert upstream.requests[1:] == ["/" + small_item.nar_url("zstd")]

    del upstream.routes["/" + small_item.nar_url("zstd")]
    upstream.requests.clear()
    await client.fetch_into_cache(upstream.url, info, store)
    assert upstream.requests == ["/" + small_item.nar_url("zstd"), "/" + small_item.nar_url("gzip")]


async def test_next_url_is_tried_when_one_fails_before_any_byte(
    upstream, client, small_item, trusted_key, store, caplog
):
    small_item.publish(upstream, trusted_key, ["zstd", "none"])
    upstream.serve("/" + small_item.nar_url("zstd"), b"gone", status=500)
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    with caplog.at_level(logging.WARNING, logger="p2pcache.net"):
        result = await client.fetch_into_cache(upstream.url, info, store)
    assert result.summary.sha256 == small_item.sha256
    assert upstream.requests[1:] == ["/" + small_item.nar_url(c) for c in ("zstd", "none")]
    assert "answered 500" in caplog.text
    assert "trying the next URL" in caplog.text


async def test_every_url_failing_is_one_error_naming_each(
    upstream, client, small_item, trusted_key, store
):
    small_item.publish(upstream, trusted_key, ["zstd", "gzip"])
    upstream.serve("/" + small_item.nar_url("zstd"), b"", status=503)
    upstream.serve("/" + small_item.nar_url("gzip"), b"", status=403)
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    with pytest.raises(UpstreamError, match=r"no URL of .* could be downloaded: .*503.*403"):
        await client.fetch_into_cache(upstream.url, info, store)
    assert stored_nothing(store)


async def test_absolute_nar_url_on_another_host(upstream, client, small_item, trusted_key, store):
    mirror = FakeUpstream()
    await mirror.start()
    try:
        mirror.serve("/mirror/x.nar.zst", small_item.zstd)
        groups = [NarURL(f"{mirror.url}/mirror/x.nar.zst", "zstd", len(small_item.zstd))]
        narinfo = small_item.narinfo(trusted_key, groups=groups)
        upstream.serve(f"/{small_item.hash_part}.narinfo", narinfo)
        info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
        result = await client.fetch_into_cache(upstream.url, info, store)
    finally:
        await mirror.stop()
    assert result.summary.sha256 == small_item.sha256
    assert mirror.requests == ["/mirror/x.nar.zst"]
    assert upstream.requests == [f"/{small_item.hash_part}.narinfo"]


async def test_nar_redirect_is_followed(upstream, client, small_item, trusted_key, store):
    small_item.publish(upstream, trusted_key, ["zstd"])
    path = "/" + small_item.nar_url("zstd")
    upstream.routes["/elsewhere/x.zst"] = upstream.routes.pop(path)
    upstream.redirect(path, "/elsewhere/x.zst", status=301)
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    result = await client.fetch_into_cache(upstream.url, info, store)
    assert result.summary.sha256 == small_item.sha256
    assert upstream.requests[1:] == [path, "/elsewhere/x.zst"]


async def test_more_than_five_nar_redirects_fail(upstream, client, small_item, trusted_key, store):
    small_item.publish(upstream, trusted_key, ["zstd"])
    hops = ["/" + small_item.nar_url("zstd")] + [f"/hop/{i}" for i in range(6)]
    for here, there in itertools.pairwise(hops):
        upstream.redirect(here, there)
    upstream.serve(hops[-1], small_item.zstd)
    info = await client.fetch_narinfo(upstream.url, small_item.hash_part)
    with pytest.raises(UpstreamError, match="more than 5 redirects"):
        await client.fetch_into_cache(upstream.url, info, store)
    assert hops[-1] not in upstream.requests
    assert stored_nothing(store)


# --- into the cache ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
async def test_nar_is_recut_into_our_chunks_and_committed(
    upstream, client, item, trusted_key, store, compression
):
    item.publish(upstream, trusted_key, [compression])
    info = await client.fetch_narinfo(upstream.url, item.hash_part)
    result = await client.fetch_into_cache(upstream.url, info, store)

    assert result.summary.sha256 == item.sha256
    assert result.summary.size == len(item.nar)
    reference = io.BytesIO()
    expected_table, _ = _bake_locally(item.nar, reference)
    assert result.table.count == 3
    assert result.table.digests == expected_table.digests
    assert result.table.root == expected_table.root
    path = store.path_of(result.nar_file)
    assert path.stat().st_size == result.table.file_size
    # To Guix the file is one zstd stream; to peers, frames that decode chunk by chunk.
    reader = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True)
    assert reader.read() == item.nar
    with path.open("rb") as f:
        assert b"".join(iter_decompressed(f, result.table)) == item.nar


def _bake_locally(nar: bytes, out: io.BytesIO):
    writer = ChunkedZstdWriter(out)
    writer.write(nar)
    return writer.finish()


async def test_tee_passes_chunks_on_while_caching(upstream, client, item, trusted_key, store):
    item.publish(upstream, trusted_key, ["gzip"])
    info = await client.fetch_narinfo(upstream.url, item.hash_part)
    received = []
    async with client.tee_into_cache(upstream.url, info, store) as tee:
        async for chunk in tee:
            received.append(chunk)
    result = await tee.result()
    assert b"".join(received) == item.nar
    assert len(received) > 1
    assert result.summary.sha256 == item.sha256
    assert list(store.iter_names()) == [result.nar_file]


async def test_consumer_stopping_early_commits_nothing(upstream, client, item, trusted_key, store):
    item.publish(upstream, trusted_key, ["none"])
    info = await client.fetch_narinfo(upstream.url, item.hash_part)
    async with client.tee_into_cache(upstream.url, info, store) as tee:
        async for _ in tee:
            break
    with pytest.raises(BakeAbandoned, match="nothing was stored"):
        await tee.result()
    assert stored_nothing(store)


async def test_shared_session_is_left_open(upstream, small_item, trusted_key):
    small_item.publish(upstream, trusted_key)
    async with aiohttp.ClientSession() as session:
        async with UpstreamClient(session, timeouts=TEST_TIMEOUTS) as shared:
            assert await shared.fetch_narinfo(upstream.url, small_item.hash_part) is not None
        assert not session.closed
