"""Hostile narinfo inputs: each attack class gets a clear NarinfoFormatError, never a crash."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.errors import NarinfoFormatError
from p2pcache.guix.narinfo import MAX_NARINFO_SIZE, parse_narinfo

VALID = (
    b"StorePath: /gnu/store/sjbf4zs2wsf2brfdyqzmdpvps50lh6mn-p2p-test-tree\n"
    b"NarHash: sha256:1z6qnc91wqh59vi52vhnclhv0za6axqxzb25kmlvxcap7d0iky80\n"
    b"NarSize: 1088\nReferences: \nSignature: 1;h;AAAA\nURL: nar/x\nCompression: none\n"
)


def test_oversized_narinfo_is_refused_before_parsing():
    with pytest.raises(NarinfoFormatError, match="more than"):
        parse_narinfo(VALID + b"#" * MAX_NARINFO_SIZE)


def test_invalid_utf8_is_refused():
    with pytest.raises(NarinfoFormatError, match="UTF-8"):
        parse_narinfo(VALID + b"Foo: \xff\xfe\n")


@pytest.mark.parametrize(
    "line",
    [b"1StorePath: x", b" StorePath: x", b"-x: y", b"\tTab: y", b"\xc2\xa0nbsp: y", b"=: y"],
)
def test_unmatched_line_is_refused(line):
    with pytest.raises(NarinfoFormatError, match="unmatched line"):
        parse_narinfo(VALID + line + b"\n")


def test_field_without_colon_is_refused():
    with pytest.raises(NarinfoFormatError, match="no colon"):
        parse_narinfo(b"StorePath /gnu/store/x\n")


def test_continuation_before_any_field_is_refused():
    with pytest.raises(NarinfoFormatError, match="continuation"):
        parse_narinfo(b"+ orphan\n")


def test_header_injection_after_blank_line_is_ignored():
    # Everything after the first blank line is outside the record, as in Guix.
    ni = parse_narinfo(VALID + b"\nStorePath: /gnu/store/evil\nURL: http://evil\n")
    assert ni.store_path.endswith("p2p-test-tree")
    assert [u.url for u in ni.urls] == ["nar/x"]


def test_many_references_stay_bounded_by_size():
    refs = b" ".join([b"x" * 60] * 10000)
    with pytest.raises(NarinfoFormatError, match="more than"):
        parse_narinfo(b"References: " + refs + b"\n" + b"#" * (MAX_NARINFO_SIZE - len(refs)))


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_parse_or_fail_cleanly(data):
    with contextlib.suppress(NarinfoFormatError):
        parse_narinfo(data)


@given(st.text(max_size=512))
def test_arbitrary_text_parse_or_fail_cleanly(text):
    try:
        ni = parse_narinfo(text.encode())
    except NarinfoFormatError:
        return
    if ni.signed_part is not None:
        assert text.encode().startswith(ni.signed_part)
