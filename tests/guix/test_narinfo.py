"""narinfo: parsed as Guix's read-narinfo does, rendered in guix publish's layout."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.errors import NarinfoFormatError
from p2pcache.guix import nix32
from p2pcache.guix.narinfo import (
    NarURL,
    format_nar_hash,
    nar_url,
    parse_fields,
    parse_nar_hash,
    parse_narinfo,
    render_narinfo,
    render_own_url_groups,
    render_signature_line,
    render_signed_part,
    render_url_groups,
)

TREE = "/gnu/store/sjbf4zs2wsf2brfdyqzmdpvps50lh6mn-p2p-test-tree"


def load_cases(vectors_dir):
    return json.loads((vectors_dir / "narinfo-vectors.json").read_text())["cases"]


def test_vector_narinfos_parse(vectors_dir):
    ni = parse_narinfo((vectors_dir / "tree.narinfo").read_bytes())
    assert ni.store_path == TREE
    assert ni.nar_hash == "sha256:1z6qnc91wqh59vi52vhnclhv0za6axqxzb25kmlvxcap7d0iky80"
    assert ni.nar_size == 1088
    assert ni.references == ()
    assert ni.deriver is None
    assert ni.urls == (
        NarURL("nar/gzip/sjbf4zs2wsf2brfdyqzmdpvps50lh6mn-p2p-test-tree", "gzip", 253),
        NarURL("nar/sjbf4zs2wsf2brfdyqzmdpvps50lh6mn-p2p-test-tree", "none", 1088),
    )
    assert ni.signature.startswith("1;p2p-test-host;")
    assert ni.hash_part == "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn"


def test_signed_part_is_the_exact_bytes_before_signature(vectors_dir):
    for case in load_cases(vectors_dir):
        raw = (vectors_dir / case["narinfo_file"]).read_bytes()
        ni = parse_narinfo(raw)
        if "signed_body" in case:
            assert ni.signed_part == case["signed_body"].encode()
        assert raw.startswith(ni.signed_part)
        assert raw[len(ni.signed_part) :].startswith(b"Signature:")


def test_render_reproduces_vector_bytes(vectors_dir):
    """Signed part, Signature line, URL groups: byte for byte what the oracle wrote."""
    for case in load_cases(vectors_dir):
        if "signed_body" not in case:
            continue
        raw = (vectors_dir / case["narinfo_file"]).read_bytes()
        ni = parse_narinfo(raw)
        signed = render_signed_part(
            ni.store_path,
            ni.nar_hash,
            ni.nar_size,
            ni.references,
            ni.deriver,
        )
        assert signed == case["signed_body"].encode()
        rendered = render_narinfo(signed, render_signature_line(case["signature_field"]), ni.urls)
        assert rendered == raw
        assert render_url_groups(ni.urls) == case["trailer"].encode()


def test_empty_references_keep_trailing_space():
    body = render_signed_part(TREE, "sha256:" + "0" * 52, 5, [])
    assert b"\nReferences: \n" in body
    assert parse_narinfo(body).references == ()


def test_deriver_only_when_present():
    assert b"Deriver" not in render_signed_part(TREE, "sha256:" + "0" * 52, 5, [], None)
    assert b"Deriver: x.drv\n" in render_signed_part(TREE, "sha256:" + "0" * 52, 5, [], "x.drv")


def test_unknown_fields_are_ignored_and_first_occurrence_wins():
    ni = parse_narinfo(
        b"StorePath: /gnu/store/a\nX-Whatever: 1\nStorePath: /gnu/store/b\n"
        b"NarHash: h\nReferences: \nSystem: x86_64-linux\n"
    )
    assert ni.store_path == "/gnu/store/a"
    assert ni.system == "x86_64-linux"


def test_url_groups_zip_by_position_and_stop_at_shortest():
    ni = parse_narinfo(
        b"URL: a\nURL: b\nURL: c\nCompression: zstd\nCompression: none\nFileSize: 9\nFileSize: 12\n"
    )
    assert ni.urls == (NarURL("a", "zstd", 9), NarURL("b", "none", 12))


def test_missing_file_sizes_are_unknown():
    ni = parse_narinfo(b"URL: a\nCompression: zstd\nURL: b\nCompression: none\n")
    assert [u.file_size for u in ni.urls] == [None, None]


def test_partial_file_sizes_shift_as_in_guix():
    # One FileSize for two URLs: Guix zips it with the first URL and drops the second.
    ni = parse_narinfo(b"URL: a\nCompression: zstd\nURL: b\nCompression: none\nFileSize: 7\n")
    assert ni.urls == (NarURL("a", "zstd", 7),)


def test_values_are_trimmed_on_the_left_only_like_guile_string_trim():
    ni = parse_narinfo(b"StorePath:    /gnu/store/x  \nNarSize: 12 \n")
    assert ni.store_path == "/gnu/store/x  "
    assert ni.nar_size is None  # Guile's string->number rejects "12 "


def test_record_grammar():
    fields = parse_fields("\n\n# comment\nA: 1\n+ more\n+tail\nb: 2\n\nC: ignored after blank\n")
    assert fields == [("A", "1\nmore\ntail"), ("b", "2")]


def test_field_names_may_start_with_percent_or_any_cased_letter():
    assert parse_fields("%rec: x\n\u00c9t\u00e9: y\n") == [("%rec", "x"), ("\u00c9t\u00e9", "y")]


def test_carriage_returns_are_part_of_the_value():
    # read-line splits on LF only; CR stays (and the signed bytes keep it).
    ni = parse_narinfo(b"StorePath: /gnu/store/x\r\nReferences: a b\r\n")
    assert ni.store_path == "/gnu/store/x\r"
    assert ni.references == ("a", "b")


def test_empty_deriver_means_none():
    assert parse_narinfo(b"Deriver: \n").deriver is None


def test_nar_hash_round_trip():
    digest = bytes(range(32))
    text = format_nar_hash(digest)
    assert text == "sha256:" + nix32.encode(digest)
    assert parse_nar_hash(text) == digest


@pytest.mark.parametrize(
    "bad",
    [
        "md5:" + "0" * 52,
        "sha256",
        "sha256:" + "0" * 51,
        "sha256:" + "e" * 52,
        "sha256:" + "0" * 64,
    ],
)
def test_parse_nar_hash_rejects(bad):
    with pytest.raises(NarinfoFormatError):
        parse_nar_hash(bad)


def test_nar_url_layout():
    assert nar_url("abc-x", "none") == "nar/abc-x"
    assert nar_url("abc-x", "zstd") == "nar/zstd/abc-x"


def test_render_refuses_partial_file_sizes():
    with pytest.raises(NarinfoFormatError, match="every URL group or for none"):
        render_url_groups([NarURL("a", "zstd", 1), NarURL("b", "none", None)])


@pytest.mark.parametrize("zstd_size", [None, 0, 5_000_000])
def test_own_url_groups_are_the_generic_rendering(zstd_size):
    base = "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn-p2p-test-tree-1.0"
    groups = [NarURL(nar_url(base, "none"), "none", 12_345)]
    if zstd_size is not None:
        groups.insert(0, NarURL(nar_url(base, "zstd"), "zstd", zstd_size))
    assert render_own_url_groups(base, 12_345, zstd_size) == render_url_groups(groups)


@pytest.mark.parametrize("base", ["a\nStorePath: evil", " lead", "trail "])
def test_own_url_groups_refuse_a_basename_that_would_change_the_record(base):
    with pytest.raises(NarinfoFormatError):
        render_own_url_groups(base, 1, None)


@pytest.mark.parametrize("value", ["a\nStorePath: evil", " lead", "trail ", "cr\r"])
def test_render_refuses_values_that_would_change_the_record(value):
    with pytest.raises(NarinfoFormatError):
        render_signed_part(value, "sha256:x", 1, [])
    with pytest.raises(NarinfoFormatError):
        render_url_groups([NarURL(value, "none", 1)])


_name = st.from_regex(r"[a-z0-9][a-z0-9+._-]{0,30}", fullmatch=True)
_base = st.builds(lambda h, n: f"{nix32.encode(h)}-{n}", st.binary(min_size=20, max_size=20), _name)


@given(
    base=_base,
    digest=st.binary(min_size=32, max_size=32),
    size=st.integers(0, 2**63),
    refs=st.lists(_base, max_size=20),
    deriver=st.none() | _base.map(lambda b: b + ".drv"),
    sizes=st.none() | st.lists(st.integers(0, 2**40), min_size=3, max_size=3),
)
def test_render_then_parse_round_trip(base, digest, size, refs, deriver, sizes):
    groups = [
        NarURL(nar_url(base, c), c, None if sizes is None else sizes[i])
        for i, c in enumerate(["zstd", "gzip", "none"])
    ]
    signed = render_signed_part("/gnu/store/" + base, format_nar_hash(digest), size, refs, deriver)
    raw = render_narinfo(signed, render_signature_line("1;h;AAAA"), groups)
    ni = parse_narinfo(raw)
    assert ni.store_path == "/gnu/store/" + base
    assert parse_nar_hash(ni.nar_hash) == digest
    assert ni.nar_size == size
    assert ni.references == tuple(refs)
    assert ni.deriver == deriver
    assert ni.urls == tuple(groups)
    assert ni.signed_part == signed


def _graphic_runs(value: str) -> tuple[str, ...]:
    """Guile's string-tokenize with char-set:graphic, one character at a time."""
    tokens, current = [], ""
    for c in value:
        if c.isprintable() and not c.isspace():
            current += c
        elif current:
            tokens.append(current)
            current = ""
    return (*tokens, current) if current else tuple(tokens)


@given(st.text(alphabet=st.characters(max_codepoint=0x7F, blacklist_characters="\n")))
def test_ascii_references_are_tokenized_as_graphic_runs(value):
    # The ASCII fast path must agree with the character rule for every ASCII character.
    narinfo = parse_narinfo(f"StorePath: {TREE}\nReferences: {value}\n".encode())
    assert narinfo.references == _graphic_runs(value)


@given(st.text())
def test_any_references_are_tokenized_as_graphic_runs(value):
    data = f"StorePath: {TREE}\nReferences: x {value} y\n".encode()
    try:
        narinfo = parse_narinfo(data)
    except NarinfoFormatError:
        return
    field = dict(parse_fields(data.decode()))["References"]
    assert narinfo.references == _graphic_runs(field)
    assert narinfo.references[0] == "x"
