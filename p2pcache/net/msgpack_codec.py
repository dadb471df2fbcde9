"""A small msgpack codec for the types the DHT uses, giving exactly what umsgpack gives.

umsgpack (what rpcudp uses) is pure Python and generic: packing or unpacking a FIND_NODE
reply with it costs 50-70 µs, most of what a query costs a busy node (2026-11-25, cProfile
of loadtest/dht_simulation.py). This codec covers nil, booleans, integers, bin, str, arrays
and maps, which is all the DHT's RPCs carry:

* `pack` writes the shortest form of each (the canonical form protocol/dht.md requires);
* `unpack` parses one object that must span all of its input, iteratively bounded: nesting
  at most MAX_DEPTH deep (umsgpack raises RecursionError on deep input), no length larger
  than the bytes left. Input using another type (float, ext) is handed to umsgpack, so the
  result is always what umsgpack.unpackb would return.

tests/net/test_msgpack_codec.py checks both against umsgpack, including on random input.
"""

from __future__ import annotations

import io
import struct

import umsgpack

MAX_DEPTH = 32

_UINT8, _UINT16, _UINT32, _UINT64 = b"\xcc", b"\xcd", b"\xce", b"\xcf"


def pack(value: object) -> bytes:
    """The msgpack encoding of `value` (shortest forms), as umsgpack.packb writes it."""
    out: list[bytes] = []
    _pack_into(value, out)
    return b"".join(out)


def _pack_into(value: object, out: list[bytes]) -> None:
    kind = type(value)
    if kind is bytes:
        n = len(value)  # type: ignore[arg-type]
        if n < 0x100:
            out.append(b"\xc4" + bytes((n,)))
        elif n < 0x10000:
            out.append(b"\xc5" + n.to_bytes(2, "big"))
        else:
            out.append(b"\xc6" + n.to_bytes(4, "big"))
        out.append(value)  # type: ignore[arg-type]
    elif kind is str:
        data = value.encode("utf-8")  # type: ignore[union-attr]
        n = len(data)
        if n < 32:
            out.append(bytes((0xA0 | n,)))
        elif n < 0x100:
            out.append(b"\xd9" + bytes((n,)))
        elif n < 0x10000:
            out.append(b"\xda" + n.to_bytes(2, "big"))
        else:
            out.append(b"\xdb" + n.to_bytes(4, "big"))
        out.append(data)
    elif kind is int:
        out.append(_pack_int(value))  # type: ignore[arg-type]
    elif kind is list or kind is tuple:
        n = len(value)  # type: ignore[arg-type]
        if n < 16:
            out.append(bytes((0x90 | n,)))
        elif n < 0x10000:
            out.append(b"\xdc" + n.to_bytes(2, "big"))
        else:
            out.append(b"\xdd" + n.to_bytes(4, "big"))
        for item in value:  # type: ignore[attr-defined]
            _pack_into(item, out)
    elif value is None:
        out.append(b"\xc0")
    elif value is True:
        out.append(b"\xc3")
    elif value is False:
        out.append(b"\xc2")
    else:
        out.append(umsgpack.packb(value))


def _pack_int(n: int) -> bytes:
    if 0 <= n < 0x80:
        return bytes((n,))
    if n >= 0:
        if n < 0x100:
            return _UINT8 + bytes((n,))
        if n < 0x10000:
            return _UINT16 + n.to_bytes(2, "big")
        if n < 0x100000000:
            return _UINT32 + n.to_bytes(4, "big")
        return _UINT64 + n.to_bytes(8, "big")
    if n >= -32:
        return struct.pack("b", n)
    return umsgpack.packb(n)


class MsgpackError(ValueError):
    """The bytes are not one well-formed msgpack object (within the limits)."""


class _Unsupported(Exception):
    """A type this codec leaves to umsgpack (float, ext, unhashable map key)."""


def unpack(data: bytes) -> object:
    """The one msgpack object `data` holds; raises MsgpackError if it is malformed, nested
    deeper than MAX_DEPTH, or followed by more bytes."""
    try:
        value, end = _unpack_at(data, 0, 0)
    except _Unsupported:
        return _unpack_with_umsgpack(data)
    except (IndexError, UnicodeDecodeError, struct.error) as error:
        raise MsgpackError(f"malformed msgpack ({error})") from None
    if end != len(data):
        raise MsgpackError("bytes after the msgpack object")
    return value


def _unpack_with_umsgpack(data: bytes) -> object:
    stream = io.BytesIO(data)
    try:
        value = umsgpack.unpack(stream)
    except (umsgpack.UnpackException, RecursionError, ValueError, TypeError) as error:
        raise MsgpackError(f"malformed msgpack ({error})") from None
    if stream.tell() != len(data):
        raise MsgpackError("bytes after the msgpack object")
    return value


def _length(data: bytes, at: int, size: int) -> tuple[int, int]:
    end = at + size
    if end > len(data):
        raise MsgpackError("truncated msgpack length")
    return int.from_bytes(data[at:end], "big"), end


def _take(data: bytes, at: int, n: int) -> tuple[bytes, int]:
    end = at + n
    if end > len(data):
        raise MsgpackError("truncated msgpack string")
    return data[at:end], end


def _unpack_at(data: bytes, at: int, depth: int) -> tuple[object, int]:
    if depth > MAX_DEPTH:
        raise MsgpackError(f"msgpack nested more than {MAX_DEPTH} deep")
    lead = data[at]
    at += 1
    if lead < 0x80:
        return lead, at
    if lead >= 0xE0:
        return lead - 0x100, at
    if 0xA0 <= lead <= 0xBF:
        raw, at = _take(data, at, lead & 0x1F)
        return raw.decode("utf-8"), at
    if 0x90 <= lead <= 0x9F:
        return _unpack_array(data, at, lead & 0x0F, depth)
    if 0x80 <= lead <= 0x8F:
        return _unpack_map(data, at, lead & 0x0F, depth)
    if lead == 0xC0:
        return None, at
    if lead == 0xC2:
        return False, at
    if lead == 0xC3:
        return True, at
    if 0xC4 <= lead <= 0xC6:
        n, at = _length(data, at, 1 << (lead - 0xC4))
        raw, at = _take(data, at, n)
        return raw, at
    if 0xD9 <= lead <= 0xDB:
        n, at = _length(data, at, 1 << (lead - 0xD9))
        raw, at = _take(data, at, n)
        return raw.decode("utf-8"), at
    if 0xCC <= lead <= 0xCF:
        return _length(data, at, 1 << (lead - 0xCC))
    if 0xD0 <= lead <= 0xD3:
        size = 1 << (lead - 0xD0)
        raw, at = _take(data, at, size)
        return int.from_bytes(raw, "big", signed=True), at
    if lead in (0xDC, 0xDD):
        n, at = _length(data, at, 2 if lead == 0xDC else 4)
        return _unpack_array(data, at, n, depth)
    if lead in (0xDE, 0xDF):
        n, at = _length(data, at, 2 if lead == 0xDE else 4)
        return _unpack_map(data, at, n, depth)
    if lead == 0xC1:
        raise MsgpackError("0xc1 is never used in msgpack")
    raise _Unsupported


def _unpack_array(data: bytes, at: int, n: int, depth: int) -> tuple[list, int]:
    size = len(data)
    if n > size - at:
        raise MsgpackError("msgpack array longer than its input")
    items: list[object] = []
    append = items.append
    for _ in range(n):
        # The frequent small items (contacts: a 20-byte id, an address, a port) inline.
        lead = data[at]
        if lead < 0x80:
            append(lead)
            at += 1
        elif lead == 0xC4:
            end = at + 2 + data[at + 1]
            if end > size:
                raise MsgpackError("truncated msgpack string")
            append(data[at + 2 : end])
            at = end
        elif 0xA0 <= lead <= 0xBF:
            end = at + 1 + (lead & 0x1F)
            if end > size:
                raise MsgpackError("truncated msgpack string")
            append(data[at + 1 : end].decode("utf-8"))
            at = end
        elif 0x90 <= lead <= 0x9F:
            if depth + 1 > MAX_DEPTH:
                raise MsgpackError(f"msgpack nested more than {MAX_DEPTH} deep")
            item, at = _unpack_array(data, at + 1, lead & 0x0F, depth + 1)
            append(item)
        elif lead == 0xCD:
            if at + 3 > size:
                raise MsgpackError("truncated msgpack integer")
            append((data[at + 1] << 8) | data[at + 2])
            at += 3
        else:
            item, at = _unpack_at(data, at, depth + 1)
            append(item)
    return items, at


def _unpack_map(data: bytes, at: int, n: int, depth: int) -> tuple[dict, int]:
    if 2 * n > len(data) - at:
        raise MsgpackError("msgpack map longer than its input")
    result = {}
    for _ in range(n):
        key, at = _unpack_at(data, at, depth + 1)
        value, at = _unpack_at(data, at, depth + 1)
        if isinstance(key, list | dict):
            raise _Unsupported
        result[key] = value
    return result, at
