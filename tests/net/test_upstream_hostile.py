"""Hostile or broken upstreams: nothing wrong gets into the cache, and nothing takes forever.

Each test serves something an upstream should not (or stalls) from a real server on 127.0.0.1.
Where the bound must act "at once", the server stalls after the offending bytes: a client that
waited for more would hit its timeout instead, and the test would see the wrong error.
"""

import time
import zlib

import pytest
import zstandard

from p2pcache.guix.narinfo import MAX_NARINFO_SIZE
from p2pcache.net.baking_tee import NarHashMismatch
from p2pcache.net.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamNarError,
    UpstreamNarinfoError,
    UpstreamTimeouts,
)
from tests.net.upstream_server import (  # noqa: F401 (fixtures)
    client_fixture,
    item_fixture,
    small_item_fixture,
    store_fixture,
    stored_nothing,
    trusted_key_fixture,
    upstream_fixture,
)

SHORT = UpstreamTimeouts(connect=2.0, narinfo=0.3, read=0.3)
# Errors that must come "at once" arrive in milliseconds; the client's timeouts are 5 s, so an
# error that came from waiting would take longer than this (and be of another kind).
PROMPT = 4.0


@pytest.fixture
async def impatient_client():
    async with UpstreamClient(timeouts=SHORT) as upstream_client:
        yield upstream_client


async def published(upstream, client, item, key, compressions):
    item.publish(upstream, key, compressions)
    return await client.fetch_narinfo(upstream.url, item.hash_part)


# --- narinfos that are not what was asked for -------------------------------------------------


async def test_store_path_of_another_item_is_refused(
    upstream, client, small_item, item, trusted_key
):
    upstream.serve(f"/{small_item.hash_part}.narinfo", item.narinfo(trusted_key))
    with pytest.raises(UpstreamNarinfoError, match="another item than the one asked for"):
        await client.fetch_narinfo(upstream.url, small_item.hash_part)


async def test_store_path_outside_the_store_is_refused(upstream, client, small_item, trusted_key):
    elsewhere = small_item.signed_part(store_path=f"/nix/store/{small_item.basename}")
    narinfo = small_item.narinfo(trusted_key, signed_part=elsewhere)
    upstream.serve(f"/{small_item.hash_part}.narinfo", narinfo)
    with pytest.raises(UpstreamNarinfoError, match="not under the store directory /gnu/store"):
        await client.fetch_narinfo(upstream.url, small_item.hash_part)


async def test_unreadable_narinfo_is_refused(upstream, client, small_item):
    upstream.serve(f"/{small_item.hash_part}.narinfo", b"StorePath: x\n 1 unmatched\n")
    with pytest.raises(UpstreamNarinfoError, match="not a narinfo Guix could read"):
        await client.fetch_narinfo(upstream.url, small_item.hash_part)


async def test_hash_part_is_checked_before_any_request(upstream, client):
    with pytest.raises(ValueError, match="not 32 nix-base32"):
        await client.fetch_narinfo(upstream.url, "../../etc/passwd")
    assert upstream.requests == []


async def test_declared_oversized_narinfo_is_refused_unread(upstream, client, small_item):
    upstream.hang_after(f"/{small_item.hash_part}.narinfo", b"", content_length=2 << 20)
    started = time.monotonic()
    with pytest.raises(UpstreamNarinfoError, match="announces a 2097152-byte narinfo"):
        await client.fetch_narinfo(upstream.url, small_item.hash_part)
    assert time.monotonic() - started < PROMPT


async def test_streamed_oversized_narinfo_is_cut_at_once(upstream, client, small_item):
    # No Content-Length, more than the limit, then silence: only reading incrementally and
    # stopping at the limit ends this before the client's 5 s timeout.
    body = b"References: " + b"x" * MAX_NARINFO_SIZE + b"\n"
    upstream.hang_after(f"/{small_item.hash_part}.narinfo", body)
    started = time.monotonic()
    with pytest.raises(UpstreamNarinfoError, match=f"more than the {MAX_NARINFO_SIZE} bytes"):
        await client.fetch_narinfo(upstream.url, small_item.hash_part)
    assert time.monotonic() - started < PROMPT


async def test_silent_upstream_hits_the_narinfo_timeout(upstream, impatient_client, small_item):
    upstream.hang_before(f"/{small_item.hash_part}.narinfo")
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"did not answer within 0\.3 s"):
        await impatient_client.fetch_narinfo(upstream.url, small_item.hash_part)
    assert time.monotonic() - started < PROMPT


# --- NARs whose bytes are wrong ---------------------------------------------------------------


async def test_wrong_nar_bytes_commit_nothing(upstream, client, item, trusted_key, store):
    info = await published(upstream, client, item, trusted_key, ["none"])
    wrong = bytearray(item.nar)
    wrong[len(wrong) // 2] ^= 1
    upstream.serve("/" + item.nar_url("none"), bytes(wrong))
    with pytest.raises(
        NarHashMismatch, match=r"does not hash to its expected NarHash .*nothing was stored"
    ):
        await client.fetch_into_cache(upstream.url, info, store)
    assert stored_nothing(store)


async def test_wrong_bytes_reach_a_tee_consumer_but_not_the_cache(
    upstream, client, item, trusted_key, store
):
    info = await published(upstream, client, item, trusted_key, ["zstd"])
    wrong = bytearray(item.nar)
    wrong[-100] ^= 1
    upstream.serve("/" + item.nar_url("zstd"), zstandard.ZstdCompressor().compress(bytes(wrong)))
    received = []
    with pytest.raises(NarHashMismatch):
        async with client.tee_into_cache(upstream.url, info, store) as tee:
            async for chunk in tee:
                received.append(chunk)
    assert b"".join(received) == bytes(wrong)  # the consumer decides what to hold back
    with pytest.raises(NarHashMismatch):
        await tee.result()
    assert stored_nothing(store)


async def test_nar_longer_than_narsize_is_cut_at_once(upstream, client, item, trusted_key, store):
    info = await published(upstream, client, item, trusted_key, ["none"])
    upstream.hang_after("/" + item.nar_url("none"), item.nar + b"\0" * 4096)
    started = time.monotonic()
    with pytest.raises(UpstreamNarError, match="past its NarSize"):
        await client.fetch_into_cache(upstream.url, info, store)
    assert time.monotonic() - started < PROMPT
    assert stored_nothing(store)


@pytest.mark.parametrize(
    ("compression", "cut", "message"),
    [
        ("none", lambda data: data[:-100], r"ends after \d+ bytes, but its NarSize is"),
        ("zstd", lambda data: data[:-100], "ends inside a zstd frame"),
        ("gzip", lambda data: data[:-100], "ends inside a gzip member"),
        ("gzip", lambda data: b"\x1f\x8c" + data[2:], "gzip stream is corrupt"),
        ("zstd", lambda data: b"\x29\xb5" + data[2:], "zstd stream is corrupt"),
    ],
    ids=["none-short", "zstd-cut", "gzip-cut", "gzip-corrupt", "zstd-corrupt"],
)
async def test_truncated_or_corrupt_nar_commits_nothing(
    upstream, client, item, trusted_key, store, compression, cut, message
):
    info = await published(upstream, client, item, trusted_key, [compression])
    upstream.serve("/" + item.nar_url(compression), cut(item.compressed(compression)))
    with pytest.raises(UpstreamNarError, match=message):
        await client.fetch_into_cache(upstream.url, info, store)
    assert stored_nothing(store)


async def test_connection_dropped_mid_nar_commits_nothing(
    upstream, client, item, trusted_key, store
):
    info = await published(upstream, client, item, trusted_key, ["none"])
    path = "/" + item.nar_url("none")
    upstream.drop_after(path, item.nar[: len(item.nar) // 2], content_length=len(item.nar))
    with pytest.raises(UpstreamError, match=r"download from .* failed"):
        await client.fetch_into_cache(upstream.url, info, store)
    assert stored_nothing(store)


async def test_stalled_nar_hits_the_read_timeout(
    upstream, impatient_client, item, trusted_key, store
):
    info = await published(upstream, impatient_client, item, trusted_key, ["none"])
    upstream.hang_after("/" + item.nar_url("none"), item.nar[:5000], content_length=len(item.nar))
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"no data for 0\.3 s"):
        await impatient_client.fetch_into_cache(upstream.url, info, store)
    assert time.monotonic() - started < PROMPT
    assert stored_nothing(store)


def _bomb(compression: str, size: int) -> bytes:
    """`size` zero bytes, compressed: a few hundred KiB at most that expand a thousandfold."""
    block = bytes(1 << 20)
    if compression == "gzip":
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(compressor.compress(block) for _ in range(size >> 20)) + compressor.flush()
    zstd = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join(zstd.compress(block) for _ in range(size >> 20)) + zstd.flush()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_decompression_bomb_is_cut_at_once(
    upstream, client, small_item, trusted_key, store, compression
):
    info = await published(upstream, client, small_item, trusted_key, [compression])
    bomb = _bomb(compression, 32 << 20)
    assert len(bomb) < 100_000
    upstream.hang_after("/" + small_item.nar_url(compression), bomb)
    started = time.monotonic()
    with pytest.raises(UpstreamNarError, match="past its NarSize"):
        await client.fetch_into_cache(upstream.url, info, store)
    assert time.monotonic() - started < PROMPT
    assert stored_nothing(store)


async def test_content_encoded_nar_is_refused(upstream, client, small_item, trusted_key, store):
    info = await published(upstream, client, small_item, trusted_key, ["none"])
    upstream.serve(
        "/" + small_item.nar_url("none"), small_item.gzip, headers={"Content-Encoding": "gzip"}
    )
    with pytest.raises(UpstreamError, match="Content-Encoding 'gzip'"):
        await client.fetch_into_cache(upstream.url, info, store)
    assert stored_nothing(store)
