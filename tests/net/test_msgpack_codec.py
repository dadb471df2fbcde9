"""The DHT's msgpack codec gives exactly what umsgpack (rpcudp's codec) gives."""

from __future__ import annotations

import io

import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.net.msgpack_codec import MAX_DEPTH, MsgpackError, pack, unpack

integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | integers | st.binary(max_size=300) | st.text(max_size=300)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=20)
        | st.dictionaries(st.text(max_size=10) | integers, children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_pack_writes_what_umsgpack_writes(value):
    assert pack(value) == umsgpack.packb(value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_unpack_reads_what_umsgpack_reads(value):
    data = umsgpack.packb(value)
    assert unpack(data) == umsgpack.unpackb(data)


def _umsgpack_reading(data: bytes) -> tuple[str, object]:
    stream = io.BytesIO(data)
    try:
        value = umsgpack.unpack(stream)
    except Exception:
        return ("error", None)
    return ("ok", value) if stream.tell() == len(data) else ("error", None)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_read_as_umsgpack_reads_them_or_refused(data):
    try:
        mine = ("ok", unpack(data))
    except MsgpackError:
        mine = ("error", None)
    assert repr(mine) == repr(_umsgpack_reading(data)) or mine == _umsgpack_reading(data)


def test_floats_and_extensions_are_left_to_umsgpack():
    for value in (1.5, [1, {"a": -0.25}], umsgpack.Ext(5, b"xyz")):
        assert unpack(umsgpack.packb(value)) == value


@pytest.mark.parametrize(
    "data",
    [
        b"\x91" * (MAX_DEPTH + 2) + b"\x00",
        b"\x81\x00" * (MAX_DEPTH + 2) + b"\x00",
        b"\x91" * 50_000 + b"\x00",
    ],
    ids=["arrays", "maps", "50k-deep"],
)
def test_deep_nesting_is_refused_without_recursion_error(data):
    with pytest.raises(MsgpackError):
        unpack(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc4\x05abc", b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\x01\x02", b"\xc1"],
    ids=["empty", "truncated-bin", "huge-array", "huge-map", "trailing", "never-used"],
)
def test_malformed_input_is_refused(data):
    with pytest.raises(MsgpackError):
        unpack(data)
