"""The narinfo list format: rendered by the server, parsed strictly by the client."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.net.narinfo_list import (
    NarinfoListFormatError,
    narinfo_list_size,
    parse_narinfo_list,
    render_narinfo_list,
)

H1, H2, H3 = "1" * 32, "a" * 32, "z" * 32
NARINFO = b"StorePath: /gnu/store/" + H1.encode() + b"-x\nSignature: 1;h;AAAA\n"


def test_the_documented_layout():
    body = render_narinfo_list([(H1, NARINFO), (H2, None)])
    assert body == (
        b"p2pcache-narinfos/v1 2\n"
        + H1.encode() + b" %d\n" % len(NARINFO) + NARINFO
        + H2.encode() + b" 0\n"
    )  # fmt: skip
    assert parse_narinfo_list(body, [H1, H2], 65536) == {H1: NARINFO, H2: None}


_hash = st.text(alphabet="0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32)


@given(st.dictionaries(_hash, st.one_of(st.none(), st.binary(min_size=1, max_size=300))))
def test_round_trip_and_size_bound(entries):
    asked = list(entries)
    body = render_narinfo_list(list(entries.items()))
    assert parse_narinfo_list(body, asked, 300) == entries
    assert len(body) <= narinfo_list_size(len(asked), 300)


@pytest.mark.parametrize(
    ("body", "asked", "match"),
    [
        (b"p2pcache-narinfos/v1 1\n" + H1.encode() + b" 0\n", [H1, H2], "answering 2"),
        (b"p2pcache-narinfos/v2 1\n" + H1.encode() + b" 0\n", [H1], "not a narinfo list"),
        (b"p2pcache-narinfos/v1 1\n" + H2.encode() + b" 0\n", [H1], "where " + H1),
        (
            b"p2pcache-narinfos/v1 2\n" + H2.encode() + b" 0\n" + H1.encode() + b" 0\n",
            [H1, H2],
            "where",
        ),  # every item, in another order
        (b"p2pcache-narinfos/v1 1\n" + H1.encode() + b" 05\nabcde", [H1], "malformed"),
        (b"p2pcache-narinfos/v1 1\n" + H1.encode() + b" -1\n", [H1], "malformed"),
        (b"p2pcache-narinfos/v1 1\n" + H1.encode() + b" 10\nabc", [H1], "cut short"),
        (b"p2pcache-narinfos/v1 1\n" + H1.encode() + b" 101\n" + b"x" * 101, [H1], "over 100"),
        (b"p2pcache-narinfos/v1 1\n" + H1.encode() + b" 1\nxy", [H1], "1 bytes after"),
        (b"p2pcache-narinfos/v1 1\n" + H2.upper().encode() + b" 0\n", [H2], "malformed"),
        (b"", [H1], "not a narinfo list"),
    ],
)
def test_anything_but_the_exact_answer_is_refused(body, asked, match):
    with pytest.raises(NarinfoListFormatError, match=match):
        parse_narinfo_list(body, asked, 100)
