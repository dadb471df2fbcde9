"""upstream_narinfo's pure functions: narinfo bytes from an upstream in, checked values out.

test_upstream.py and test_upstream_hostile.py drive this module through UpstreamClient and a
real HTTP server; here each function is called directly, so every refusal, the NAR source order
(zstd, gzip, none; never lzip, xz or bzip2, whatever FileSize says) and URL resolution
(spec §2.2) are checked one by one, against the spec vectors where they apply, and hostile
bytes are thrown at the functions to show that nothing but the module's own errors escapes.
"""

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.errors import StorePathError
from p2pcache.guix import nix32
from p2pcache.guix.narinfo import (
    MAX_NARINFO_SIZE,
    Narinfo,
    NarURL,
    nar_url,
    parse_nar_hash,
    parse_narinfo,
    render_narinfo,
    render_signature_line,
    render_signed_part,
)
from p2pcache.guix.narinfo_signature import SignatureStatus
from p2pcache.guix.signing_key import parse_acl, parse_public_key
from p2pcache.net.upstream_narinfo import (
    NarSource,
    Refusal,
    UpstreamError,
    UpstreamNarinfoError,
    UpstreamUnsupported,
    check_upstream_narinfo,
    check_upstream_url,
    nar_sources,
    narinfo_url,
    preferred_groups,
    resolve_nar_url,
    verify_upstream_narinfo,
)

# The tree vector (spec/vectors/tree.narinfo, nar-vectors.json "tree").
TREE_HASH = "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn"
TREE_BASENAME = f"{TREE_HASH}-p2p-test-tree"
TREE_PATH = f"/gnu/store/{TREE_BASENAME}"
OTHER_HASH = "0" * 32
CACHE = "https://ci.guix.test"
FAST = settings(max_examples=250, deadline=None)
UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
VECTORS_DIR = Path(__file__).parents[1] / "vectors"  # the vectors_dir fixture, at import
NARINFO_VECTORS = json.loads((VECTORS_DIR / "narinfo-vectors.json").read_text())


def nar_vector(vectors_dir, name):
    return json.loads((vectors_dir / "nar-vectors.json").read_text())["nars"][name]


@pytest.fixture(name="tree_narinfo")
def tree_narinfo_fixture(vectors_dir) -> bytes:
    return (vectors_dir / "tree.narinfo").read_bytes()


def make_narinfo(
    groups=(),
    *,
    store_path=TREE_PATH,
    nar_hash="sha256:1z6qnc91wqh59vi52vhnclhv0za6axqxzb25kmlvxcap7d0iky80",
    nar_size=1088,
) -> bytes:
    """A narinfo in `guix publish`'s layout; the signature is never checked here."""
    signed = render_signed_part(store_path, nar_hash, nar_size, [])
    return render_narinfo(signed, render_signature_line("1;ci.guix.test;AAAA"), groups)


def groups_of(*compressions: str) -> list[NarURL]:
    """One group per compression, with the relative URL `guix publish` writes, no FileSize."""
    return [NarURL(nar_url(TREE_BASENAME, c), c, None) for c in compressions]


def parsed(groups) -> Narinfo:
    return parse_narinfo(make_narinfo(groups))


# --- check_upstream_narinfo: what an accepted narinfo gives ----------------------------------


def test_tree_vector_gives_the_values_of_the_nar_vector(vectors_dir, tree_narinfo):
    vector = nar_vector(vectors_dir, "tree")
    info = check_upstream_narinfo(tree_narinfo, CACHE, TREE_HASH)
    assert info.store_path.path == TREE_PATH
    assert info.store_path.name == "p2p-test-tree"
    assert info.store_path.hash_part == TREE_HASH
    assert info.nar_sha256 == bytes.fromhex(vector["nar_sha256_hex"])
    assert info.nar_sha256 == hashlib.sha256((vectors_dir / "tree.nar").read_bytes()).digest()
    assert info.nar_size == vector["nar_size"] == 1088
    assert info.cache_url == CACHE
    assert info.raw == tree_narinfo


def test_hello_vector_with_references_and_deriver_is_accepted(vectors_dir):
    # hello-synthetic.narinfo describes the single-file NAR under another name.
    raw = (vectors_dir / "hello-synthetic.narinfo").read_bytes()
    vector = nar_vector(vectors_dir, "single-file")
    info = check_upstream_narinfo(raw, CACHE, "f9qkxn3b6sj168gw4h9hgfzk010hx1fz")
    assert info.store_path.name == "hello-2.12.2"
    nar = (vectors_dir / "single-file.nar").read_bytes()
    assert info.nar_sha256 == hashlib.sha256(nar).digest()
    assert info.nar_sha256 == bytes.fromhex(vector["nar_sha256_hex"])
    assert info.nar_size == len(nar) == vector["nar_size"]


@pytest.mark.parametrize(
    "upstream_url",
    [CACHE, CACHE + "/", CACHE + "///", "http://10.0.0.1:8080/guix/", "https://h/a/b//"],
)
def test_cache_url_is_kept_without_trailing_slashes(tree_narinfo, upstream_url):
    info = check_upstream_narinfo(tree_narinfo, upstream_url, TREE_HASH)
    assert info.cache_url == upstream_url.rstrip("/")


def test_another_store_dir_is_accepted_when_asked_for(tree_narinfo):
    nix = tree_narinfo.replace(b"StorePath: /gnu/store/", b"StorePath: /nix/store/")
    info = check_upstream_narinfo(nix, CACHE, TREE_HASH, store_dir="/nix/store")
    assert info.store_path.store_dir == "/nix/store"
    assert info.store_path.path == f"/nix/store/{TREE_BASENAME}"
    with pytest.raises(UpstreamNarinfoError, match="not under the store directory /gnu/store"):
        check_upstream_narinfo(nix, CACHE, TREE_HASH)


def test_narinfo_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not(tree_narinfo):
    # Comment lines are skipped by the parser, so they pad without changing the narinfo.
    padding = MAX_NARINFO_SIZE - len(tree_narinfo) - 2
    at_limit = tree_narinfo + b"#" + b"x" * padding + b"\n"
    assert len(at_limit) == MAX_NARINFO_SIZE
    assert check_upstream_narinfo(at_limit, CACHE, TREE_HASH).nar_size == 1088
    with pytest.raises(UpstreamNarinfoError, match=f"more than the {MAX_NARINFO_SIZE} allowed"):
        check_upstream_narinfo(at_limit + b"\n", CACHE, TREE_HASH)


# --- check_upstream_narinfo: each refusal ----------------------------------------------------


def replace(old: bytes, new: bytes):
    def mutate(raw: bytes) -> bytes:
        assert old in raw
        return raw.replace(old, new, 1)

    return mutate


REFUSALS = {
    "outside-the-store": (
        replace(b"StorePath: /gnu/store/", b"StorePath: /nix/store/"),
        r"names an unusable StorePath: .* is not under the store directory /gnu/store",
    ),
    "in-a-subdirectory": (
        replace(b"/gnu/store/", b"/gnu/store/sub/"),
        r"names an unusable StorePath: .* is not directly under /gnu/store",
    ),
    "relative-store-path": (
        replace(b"StorePath: /gnu/store/", b"StorePath: "),
        r"not under the store directory",
    ),
    "no-store-path": (replace(b"StorePath:", b"StorePatx:"), r"has no StorePath$"),
    "no-name": (replace(b"-p2p-test-tree\n", b"\n"), r"is not of the form <hash>-<name>"),
    "empty-name": (replace(b"-p2p-test-tree\n", b"-\n"), r"store path name is empty"),
    "forbidden-name-char": (
        replace(b"p2p-test-tree\n", b"p2p-test-tree\x00\n"),
        r"contains forbidden '\\x00'",
    ),
    "crlf-lines": (
        lambda raw: raw.replace(b"\n", b"\r\n"),
        r"contains forbidden '\\r'",
    ),
    "another-item": (
        replace(TREE_HASH.encode(), OTHER_HASH.encode()),
        rf"describes /gnu/store/{OTHER_HASH}-p2p-test-tree, another item than the one asked for",
    ),
    "another-item-first-of-two-store-paths": (
        # Guix takes the first StorePath; so must the hash check.
        lambda raw: f"StorePath: /gnu/store/{OTHER_HASH}-x\n".encode() + raw,
        r"another item than the one asked for",
    ),
    "no-nar-hash": (replace(b"NarHash:", b"NarHasx:"), r": NarHash '' is not of the form"),
    "md5-nar-hash": (replace(b"NarHash: sha256:", b"NarHash: md5:"), r"'md5:.* is not of the form"),
    "hex-nar-hash": (
        replace(
            b"sha256:1z6qnc91wqh59vi52vhnclhv0za6axqxzb25kmlvxcap7d0iky80",
            b"sha256:00f919413b57b1be699d45acdf7157467db02165166e51e24e05621e12b3d8fc",
        ),
        r"does not hold a 32-byte digest",
    ),
    "short-nar-hash": (replace(b"sha256:1z6", b"sha256:1z"), r"does not hold a 32-byte digest"),
    "nar-hash-bad-char": (
        replace(b"sha256:1z6", b"sha256:1e6"),
        r"character 'e' is not in the nix-base32 alphabet",
    ),
    "nar-hash-too-many-bits": (
        replace(b"sha256:1z6", b"sha256:zz6"),
        r"has bits beyond its 32 bytes",
    ),
    "no-nar-size": (replace(b"NarSize:", b"NarSizx:"), r"has no usable NarSize$"),
    "zero-nar-size": (replace(b"NarSize: 1088", b"NarSize: 0"), r"has no usable NarSize$"),
    "negative-nar-size": (replace(b"NarSize: 1088", b"NarSize: -1088"), r"has no usable NarSize$"),
    "hex-nar-size": (replace(b"NarSize: 1088", b"NarSize: 0x440"), r"has no usable NarSize$"),
    "nar-size-with-unit": (
        replace(b"NarSize: 1088", b"NarSize: 1088 bytes"),
        r"has no usable NarSize$",
    ),
    "nar-size-in-arabic-digits": (
        replace(b"NarSize: 1088", "NarSize: ١٠٨٨".encode()),
        r"has no usable NarSize$",
    ),
    "invalid-utf8": (
        replace(b"References: ", b"References: \xff\xfe"),
        r"is not a narinfo Guix could read: narinfo is not valid UTF-8",
    ),
    "unmatched-line": (
        lambda raw: raw + b" indented\n",
        r"is not a narinfo Guix could read: unmatched line in narinfo",
    ),
    "field-without-colon": (
        lambda raw: b"StorePath\n" + raw,
        r"is not a narinfo Guix could read: narinfo field line has no colon",
    ),
    "continuation-first": (
        lambda raw: b"+more\n" + raw,
        r"is not a narinfo Guix could read: narinfo continuation line before any field",
    ),
    "oversize": (
        lambda raw: raw + b"#" * MAX_NARINFO_SIZE,
        rf"is not a narinfo Guix could read: narinfo is \d+ bytes, more than the "
        rf"{MAX_NARINFO_SIZE} allowed",
    ),
    "empty": (lambda raw: b"", r"has no StorePath$"),
}


@pytest.mark.parametrize(("mutate", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_names_the_narinfo_and_the_reason(tree_narinfo, mutate, message):
    where = f"{CACHE}/{TREE_HASH}.narinfo"
    with pytest.raises(UpstreamNarinfoError, match=message) as caught:
        check_upstream_narinfo(mutate(tree_narinfo), CACHE + "/", TREE_HASH)
    assert caught.value.url == where
    assert str(caught.value).startswith(where)


def test_a_number_of_thousands_of_digits_is_a_format_error_not_a_crash(tree_narinfo):
    """Python's int() refuses over 4,300 digits (a plain ValueError leaked once)."""
    huge = b"1" * 4301
    with pytest.raises(UpstreamNarinfoError, match="no usable NarSize"):
        check_upstream_narinfo(
            replace(b"NarSize: 1088", b"NarSize: " + huge)(tree_narinfo), CACHE, TREE_HASH
        )
    # FileSize only orders the groups: one no size can be is unknown, as if absent.
    info = check_upstream_narinfo(
        replace(b"FileSize: 253", b"FileSize: " + huge)(tree_narinfo), CACHE, TREE_HASH
    )
    assert [g.file_size for g in info.narinfo.urls] == [None, 1088]
    # Leading zeros are no digits of size: Guile reads 0...01088 as 1088.
    padded = replace(b"NarSize: 1088", b"NarSize: " + b"0" * 40 + b"1088")(tree_narinfo)
    assert check_upstream_narinfo(padded, CACHE, TREE_HASH).nar_size == 1088


def test_hash_part_is_compared_exactly(tree_narinfo):
    # Store path hashes are lower-case nix32; an upper-case request names no item here.
    with pytest.raises(UpstreamNarinfoError, match="another item than the one asked for"):
        check_upstream_narinfo(tree_narinfo, CACHE, TREE_HASH.upper())


# --- URLs: the cache URL, the narinfo URL, NAR URLs -------------------------------------------


@pytest.mark.parametrize(
    ("upstream_url", "expected"),
    [
        ("https://ci.guix.gnu.org", "https://ci.guix.gnu.org"),
        ("https://ci.guix.gnu.org//", "https://ci.guix.gnu.org"),
        ("http://[::1]:8080/cache/", "http://[::1]:8080/cache"),
    ],
)
def test_usable_cache_url_loses_its_trailing_slashes(upstream_url, expected):
    assert check_upstream_url(upstream_url) == expected


@pytest.mark.parametrize(
    "upstream_url",
    [
        "ftp://ci.guix.gnu.org",
        "ci.guix.gnu.org",
        "/gnu/store",
        "http://",
        "http:///x",
        "",
        "/",
        "https://ci.guix.gnu.org/a b",
        "https://ci.guix.gnu.org/\x00",
        "file:///srv/cache",
        "http://h:99999",
        "http://\u00e9.example",
    ],
)
def test_unusable_cache_url_is_refused(upstream_url):
    with pytest.raises(UpstreamError, match="is not an http:// or https:// URL") as caught:
        check_upstream_url(upstream_url)
    assert caught.value.url == upstream_url


def test_narinfo_url_handles_a_trailing_slash_and_checks_the_hash_part():
    assert narinfo_url(CACHE + "/", TREE_HASH) == f"{CACHE}/{TREE_HASH}.narinfo"
    assert narinfo_url(CACHE + "/sub", TREE_HASH) == f"{CACHE}/sub/{TREE_HASH}.narinfo"
    with pytest.raises(StorePathError, match="not 32 nix-base32"):
        narinfo_url(CACHE, "../../etc/passwd")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nar/zstd/x", f"{CACHE}/cache/nar/zstd/x"),
        ("nar/x:y", f"{CACHE}/cache/nar/x:y"),  # a colon after a slash is no scheme
        ("1http://h/x", f"{CACHE}/cache/1http://h/x"),  # a scheme starts with a letter
        ("http://peer.test:8080/nar/x", "http://peer.test:8080/nar/x"),
        ("HTTPS://peer.test/nar/x", "HTTPS://peer.test/nar/x"),
        ("git+ssh://h/x", "git+ssh://h/x"),
    ],
)
def test_nar_url_resolves_as_guix_resolves_it(url, expected):
    assert resolve_nar_url(CACHE + "/cache/", url) == expected


# --- the NAR source choice -------------------------------------------------------------------


def test_tree_vector_sources_are_gzip_then_none_under_the_cache(tree_narinfo):
    info = check_upstream_narinfo(tree_narinfo, CACHE + "/cache/", TREE_HASH)
    assert nar_sources(info.cache_url, info.narinfo) == [
        NarSource(f"{CACHE}/cache/nar/gzip/{TREE_BASENAME}", "gzip", 253),
        NarSource(f"{CACHE}/cache/nar/{TREE_BASENAME}", "none", 1088),
    ]


def test_hello_vector_drops_lzip_and_puts_zstd_first(vectors_dir):
    narinfo = parse_narinfo((vectors_dir / "hello-synthetic.narinfo").read_bytes())
    assert narinfo.urls[0].compression == "lzip"
    assert [(g.compression, g.file_size) for g in preferred_groups(narinfo)] == [
        ("zstd", 102),
        ("none", 128),
    ]


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["lzip", "none", "gzip", "xz", "zstd", "bzip2"], ["zstd", "gzip", "none"]),
        (["none", "gzip"], ["gzip", "none"]),
        (["none", "lzip"], ["none"]),
        (["gzip", "zstd", "gzip"], ["zstd", "gzip", "gzip"]),
        (["none"], ["none"]),
    ],
)
def test_groups_are_ordered_zstd_gzip_none_and_others_dropped(offered, chosen):
    narinfo = parsed(groups_of(*offered))
    assert [g.compression for g in preferred_groups(narinfo)] == chosen


def test_file_size_does_not_decide_the_order():
    # Guix would try the smallest file first (gzip here); we go by decoding speed.
    narinfo = parsed(
        [
            NarURL("nar/none/x", "none", 10),
            NarURL("nar/gzip/x", "gzip", 20),
            NarURL("nar/zstd/x", "zstd", 9000),
        ]
    )
    assert [s.url for s in nar_sources(CACHE, narinfo)] == [
        f"{CACHE}/nar/zstd/x",
        f"{CACHE}/nar/gzip/x",
        f"{CACHE}/nar/none/x",
    ]


@pytest.mark.parametrize("mirrors", [("a", "b"), ("b", "a")])
def test_file_order_is_kept_within_one_compression(mirrors):
    first, second = (f"http://{m}.test/nar/zstd/x" for m in mirrors)
    narinfo = parsed(
        [NarURL("nar/x", "none", 1), NarURL(first, "zstd", 9), NarURL(second, "zstd", 8)]
    )
    assert [s.url for s in nar_sources(CACHE, narinfo)] == [first, second, f"{CACHE}/nar/x"]


def test_groups_without_file_size_have_none():
    narinfo = parse_narinfo(
        make_narinfo()
        + b"URL: nar/gzip/x\nCompression: gzip\nURL: http://peer.test/nar/zstd/x\n"
        + b"Compression: zstd\n"
    )
    assert nar_sources(CACHE, narinfo) == [
        NarSource("http://peer.test/nar/zstd/x", "zstd", None),
        NarSource(f"{CACHE}/nar/gzip/x", "gzip", None),
    ]


def test_partial_file_sizes_truncate_the_groups_as_in_guix():
    # Spec §2.2: URL, Compression and FileSize are zipped by position, up to the shortest.
    narinfo = parse_narinfo(
        make_narinfo()
        + b"URL: nar/gzip/x\nCompression: gzip\nFileSize: 7\nURL: nar/zstd/x\nCompression: zstd\n"
    )
    assert nar_sources(CACHE, narinfo) == [NarSource(f"{CACHE}/nar/gzip/x", "gzip", 7)]


@pytest.mark.parametrize("compression", [b"ZSTD", b"Zstd", b"zstd ", b"gz", b"brotli", b""])
def test_compression_names_are_matched_exactly(compression):
    # Values are trimmed on the left only, as Guile's string-trim does: "zstd " is no zstd.
    narinfo = parse_narinfo(
        make_narinfo()
        + b"URL: nar/x\nCompression: "
        + compression
        + b"\nURL: nar/y\nCompression: none\n"
    )
    assert [g.url for g in narinfo.urls] == ["nar/x", "nar/y"]
    assert [g.url for g in preferred_groups(narinfo)] == ["nar/y"]


def test_undecodable_only_is_logged_once_per_compression(caplog):
    narinfo = parsed(groups_of("lzip", "xz", "lzip", "bzip2"))
    with caplog.at_level(logging.INFO, logger="p2pcache.net"):
        assert preferred_groups(narinfo) == []
    assert caplog.messages == [f"skipping {TREE_PATH}: upstream offers it only as lzip, xz, bzip2"]
    with pytest.raises(UpstreamUnsupported, match=r"only as lzip, xz, bzip2$") as caught:
        nar_sources(CACHE, narinfo)
    assert caught.value.url == CACHE


def test_nothing_is_logged_when_a_group_is_usable_or_there_is_none(caplog):
    with caplog.at_level(logging.INFO, logger="p2pcache.net"):
        assert len(preferred_groups(parsed(groups_of("lzip", "gzip")))) == 1
        assert preferred_groups(parsed([])) == []
    assert caplog.messages == []


def test_narinfo_without_url_has_no_source():
    with pytest.raises(UpstreamNarinfoError, match=f"narinfo of {TREE_PATH} from .* has no URL"):
        nar_sources(CACHE, parsed([]))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/nar/x",
        "file:///gnu/store/x",
        "nar:zstd/x",
        "http:nar/x",
        "https:///nar/x",
        "nar/a b",
        "nar/a\tb",
        "http://peer.test/a\x7fb",
        # yarl reads a port and an IDNA host only when asked (these leaked ValueError once):
        "http://h:99999/nar/x",
        "http://h:x/nar/x",
        "http://\u00e9.example/nar/x",
        "http://xn--a/nar/x",
    ],
)
def test_url_that_is_not_http_is_skipped(url, caplog):
    narinfo = parsed([NarURL(url, "zstd", 1), NarURL("nar/x", "gzip", 2)])
    with caplog.at_level(logging.INFO, logger="p2pcache.net"):
        assert nar_sources(CACHE, narinfo) == [NarSource(f"{CACHE}/nar/x", "gzip", 2)]
    assert caplog.messages == [f"ignoring NAR URL {url!r} of {TREE_PATH}: not http(s)"]
    with pytest.raises(UpstreamNarinfoError, match=r"no URL in the narinfo .* is an http"):
        nar_sources(CACHE, parsed([NarURL(url, "zstd", 1)]))


def test_relative_url_needs_an_http_cache_url():
    with pytest.raises(UpstreamError, match="is not an http:// or https:// URL"):
        nar_sources("file:///srv/cache", parsed(groups_of("zstd")))


# --- verdicts on the libgcrypt-signed vectors -------------------------------------------------


def keys_of(vectors_dir, key_file):
    data = (vectors_dir / key_file).read_bytes()
    return parse_acl(data) if data.lstrip().startswith(b"(acl") else [parse_public_key(data)]


@pytest.mark.parametrize(
    "case", NARINFO_VECTORS["cases"], ids=[c["name"] for c in NARINFO_VECTORS["cases"]]
)
def test_vector_verdicts_are_the_ones_libgcrypt_gave(vectors_dir, case):
    raw = (vectors_dir / case["narinfo_file"]).read_bytes()
    info = check_upstream_narinfo(raw, CACHE, parse_narinfo(raw).hash_part)
    key_file = case.get("key_file", NARINFO_VECTORS["public_key_file"])
    verdict = verify_upstream_narinfo(info, keys_of(vectors_dir, key_file))
    assert verdict.signature == case["expected"]
    assert verdict.is_accepted == (case["expected"] == "valid-signature")
    if not verdict.is_accepted:
        assert verdict.refusal is Refusal.SIGNATURE
        assert verdict.reason == f"narinfo signature: {case['expected']}"


@pytest.mark.parametrize(
    ("trailer", "reason"),
    [
        (b"", "it lists no NAR URL"),
        (b"URL: nar/xz/x\nCompression: xz\nURL: nar/bzip2/x\nCompression: bzip2\n", "xz, bzip2"),
    ],
)
def test_signed_vector_without_a_usable_url_is_not_relayed(
    vectors_dir, tree_narinfo, trailer, reason
):
    # The URL groups follow the signature, so the vector's signature stays valid without them.
    start = tree_narinfo.index(b"URL:")
    info = check_upstream_narinfo(tree_narinfo[:start] + trailer, CACHE, TREE_HASH)
    verdict = verify_upstream_narinfo(info, keys_of(vectors_dir, "test-acl"))
    assert verdict.signature is SignatureStatus.VALID
    assert verdict.refusal is Refusal.NO_USABLE_NAR
    assert verdict.reason.endswith(reason)


# --- properties and hostile input -------------------------------------------------------------

COMPRESSIONS = ("zstd", "gzip", "none", "lzip", "xz", "bzip2")


@FAST
@given(st.lists(st.sampled_from(COMPRESSIONS), max_size=12), st.booleans())
def test_source_order_is_a_stable_sort_by_decoding_speed(offered, with_sizes):
    groups = [
        NarURL(f"nar/{c}/{i}", c, 100 - i if with_sizes else None) for i, c in enumerate(offered)
    ]
    narinfo = parsed(groups)
    expected = [g for c in ("zstd", "gzip", "none") for g in groups if g.compression == c]
    assert preferred_groups(narinfo) == expected
    if expected:
        sources = nar_sources(CACHE, narinfo)
        assert sources == [
            NarSource(f"{CACHE}/{g.url}", g.compression, g.file_size) for g in expected
        ]


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@FAST
@given(st.text(min_size=1, max_size=60).filter(lambda url: not _SCHEME.match(url)))
def test_relative_url_is_cache_slash_url_unless_it_holds_a_space_or_control(url):
    # The URL is put in place directly: the narinfo grammar would refuse some of them.
    narinfo = dataclasses.replace(parsed([]), urls=(NarURL(url, "zstd", 1),))
    if UNSAFE_URL_CHARS.search(url):
        with pytest.raises(UpstreamNarinfoError, match="is an http"):
            nar_sources(CACHE + "/c/", narinfo)
    else:
        assert nar_sources(CACHE + "/c/", narinfo) == [NarSource(f"{CACHE}/c/{url}", "zstd", 1)]


def check_everything(data: bytes, hash_part: str = TREE_HASH) -> None:
    """Run bytes through the module as the client does; only its own errors may escape."""
    try:
        info = check_upstream_narinfo(data, CACHE, hash_part)
    except UpstreamNarinfoError as e:
        assert e.url == f"{CACHE}/{hash_part}.narinfo"
        return
    # Accepted: the values are the ones the checks promise.
    assert info.store_path.hash_part == hash_part
    assert info.store_path.path == info.narinfo.store_path
    assert info.nar_sha256 == parse_nar_hash(info.narinfo.nar_hash)
    assert info.nar_size == info.narinfo.nar_size > 0
    try:
        sources = nar_sources(info.cache_url, info.narinfo)
    except (UpstreamUnsupported, UpstreamNarinfoError):
        return
    assert sources
    for source in sources:
        assert source.url.startswith(("http://", "https://"))
        assert not UNSAFE_URL_CHARS.search(source.url)
        assert source.compression in ("zstd", "gzip", "none")


@FAST
@given(st.binary(max_size=1500))
def test_random_bytes_raise_only_upstream_narinfo_errors(data):
    check_everything(data)


# Each field with a value the checks accept (two times in three) or any text.
_USABLE = {
    "StorePath": TREE_PATH,
    "NarHash": "sha256:" + nix32.encode(bytes(32)),
    "NarSize": "1088",
    "References": "",
    "URL": "nar/x",
    "Compression": "zstd",
    "FileSize": "12",
    "Unknown": "x",
}
_FIELD_LINE = st.sampled_from(sorted(_USABLE)).flatmap(
    lambda name: st.tuples(
        st.just(name), st.sampled_from([_USABLE[name]] * 2) | st.text(max_size=40)
    )
)


@FAST
@given(st.lists(_FIELD_LINE, max_size=12))
def test_random_fields_raise_only_upstream_narinfo_errors(fields):
    text = "".join(f"{name}: {value}\n" for name, value in fields)
    check_everything(text.encode())


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """The vector narinfo with a few bytes or lines replaced, inserted, removed or repeated."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "line"]))
        if kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            lines = bytes(data).split(b"\n")
            line = draw(st.sampled_from(lines))
            lines.insert(draw(st.integers(0, len(lines))), line)
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@FAST
@given(mutated((VECTORS_DIR / "tree.narinfo").read_bytes()))
def test_mutated_vector_raises_only_upstream_errors(data):
    check_everything(data)
