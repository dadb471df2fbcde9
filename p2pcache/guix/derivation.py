"""Reading the system type out of a `.drv` file (Guix's ATerm `Derive(...)` text).

A builder attests the system an item was built for (protocol/attestation.md §2), and the only
record of it is the derivation: `Derive([outputs],[input drvs],[input sources],"<system>",
"<builder>",[args],[env])`. Only the first four fields are read: the three lists are skipped
term by term (strings with Guix's backslash escapes, nested lists and tuples), then the system
string is taken. Pure: bytes in, a string out; bounded in size and nesting.
"""

from __future__ import annotations

from p2pcache.errors import FormatError

MAX_DERIVATION_SIZE = 64 << 20
"""A .drv holds its whole environment; real ones reach a few MiB, never this."""
MAX_NESTING = 8
"""Derive's lists hold tuples of strings and lists of strings: three levels deep."""

_PREFIX = b"Derive("
_ESCAPES = {ord("n"): "\n", ord("r"): "\r", ord("t"): "\t", ord("\\"): "\\", ord('"'): '"'}


class DerivationFormatError(FormatError):
    """Bytes are not a derivation in the ATerm form Guix writes."""


def parse_derivation_system(data: bytes) -> str:
    """The system type (e.g. `x86_64-linux`) of the derivation whose text is `data`."""
    if len(data) > MAX_DERIVATION_SIZE:
        raise DerivationFormatError(f"a derivation of {len(data)} bytes is larger than allowed")
    if not data.startswith(_PREFIX):
        raise DerivationFormatError("the derivation does not start with 'Derive('")
    position = len(_PREFIX)
    for _ in range(3):
        if data[position : position + 1] != b"[":
            raise DerivationFormatError(f"expected a list at byte {position} of the derivation")
        position = _skip_term(data, position)
        position = _expect(data, position, b",")
    system, _ = _read_string(data, position)
    return system


def _expect(data: bytes, position: int, token: bytes) -> int:
    if data[position : position + len(token)] != token:
        raise DerivationFormatError(f"expected {token.decode()!r} at byte {position}")
    return position + len(token)


def _read_string(data: bytes, position: int) -> tuple[str, int]:
    """The ATerm string starting at `position` (a double quote), and the position after it."""
    position = _expect(data, position, b'"')
    out: list[str] = []
    start = position
    while True:
        end = _find_quote_or_backslash(data, position)
        try:
            out.append(data[position:end].decode("utf-8"))
        except UnicodeDecodeError:
            raise DerivationFormatError(f"the string at byte {start} is not UTF-8") from None
        if data[end] == ord('"'):
            return "".join(out), end + 1
        escaped = data[end + 1] if end + 1 < len(data) else None
        if escaped not in _ESCAPES:
            raise DerivationFormatError(f"bad escape in the string at byte {start}")
        out.append(_ESCAPES[escaped])
        position = end + 2


def _find_quote_or_backslash(data: bytes, position: int) -> int:
    quote = data.find(b'"', position)
    backslash = data.find(b"\\", position, quote if quote >= 0 else len(data))
    if quote < 0:
        raise DerivationFormatError("a string of the derivation is not closed")
    return backslash if backslash >= 0 else quote


def _skip_term(data: bytes, position: int) -> int:
    """Skip one string, list or tuple starting at `position`; return the position after it."""
    closers: list[int] = []
    while True:
        char = data[position : position + 1]
        if char == b'"':
            _, position = _read_string(data, position)
        elif char in (b"[", b"("):
            if len(closers) >= MAX_NESTING:
                raise DerivationFormatError("the derivation is nested too deeply")
            closers.append(ord("]") if char == b"[" else ord(")"))
            position += 1
            if data[position : position + 1] != bytes([closers[-1]]):
                continue  # a non-empty list or tuple: its first term comes next
            closers.pop()
            position += 1
        else:
            raise DerivationFormatError(f"unexpected {char!r} at byte {position}")
        # After a term: a comma (another term follows) or the closers of finished lists.
        while closers and data[position : position + 1] == bytes([closers[-1]]):
            closers.pop()
            position += 1
        if not closers:
            return position
        position = _expect(data, position, b",")
