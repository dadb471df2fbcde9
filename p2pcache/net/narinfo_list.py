"""The narinfo list of the peer API (`GET /p2p/v1/narinfos/…`, protocol/peer-api.md).

Guix asks for up to 1000 narinfos at once; a node that misses them finds most at the same
few providers, and one HTTP request per item costs both sides more CPU than the narinfo's
own checks. The list answers for several items in one response, in the order asked:

    p2pcache-narinfos/v1 <count>\\n
    <hash> <length>\\n<narinfo>      (once per hash asked; length 0: not held)

Pure: rendering for the server, strict parsing for the client (everything it did not ask
for, in another order, oversized, truncated or followed by anything is refused).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from p2pcache.errors import FormatError

MAX_NARINFOS_PER_REQUEST = 64
"""Hash parts per request: a URL of about 2 KiB, an answer of at most 64 narinfos."""
HEADER = b"p2pcache-narinfos/v1"
_ENTRY = re.compile(rb"([0-9a-df-np-sv-z]{32}) (0|[1-9][0-9]{0,8})\n")


class NarinfoListFormatError(FormatError):
    """A narinfo list that is not exactly the answer to what was asked."""


def render_narinfo_list(entries: Sequence[tuple[str, bytes | None]]) -> bytes:
    """The list body for (hash part, narinfo or None when not held), in the order asked."""
    parts = [b"%s %d\n" % (HEADER, len(entries))]
    for hash_part, narinfo in entries:
        data = narinfo or b""
        parts.append(b"%s %d\n" % (hash_part.encode("ascii"), len(data)))
        parts.append(data)
    return b"".join(parts)


def narinfo_list_size(count: int, max_narinfo: int) -> int:
    """The largest well-formed answer for `count` hash parts (a client's read bound)."""
    return len(HEADER) + 6 + count * (32 + 1 + len(str(max_narinfo)) + 1 + max_narinfo)


def parse_narinfo_list(
    data: bytes, asked: Sequence[str], max_narinfo: int
) -> dict[str, bytes | None]:
    """Each asked hash part's narinfo (None: the peer does not hold it)."""
    expected = b"%s %d\n" % (HEADER, len(asked))
    if not data.startswith(expected):
        raise NarinfoListFormatError(
            f"not a narinfo list answering {len(asked)} hash parts: {data[:40]!r}"
        )
    position = len(expected)
    found: dict[str, bytes | None] = {}
    for hash_part in asked:
        entry = _ENTRY.match(data, position)
        if entry is None:
            raise NarinfoListFormatError(f"malformed entry at byte {position}")
        if entry.group(1).decode("ascii") != hash_part:
            raise NarinfoListFormatError(
                f"entry for {entry.group(1).decode('ascii')} where {hash_part} was asked"
            )
        length = int(entry.group(2))
        if length > max_narinfo:
            raise NarinfoListFormatError(f"a narinfo of {length} bytes, over {max_narinfo}")
        position = entry.end() + length
        if position > len(data):
            raise NarinfoListFormatError(f"the narinfo of {hash_part} is cut short")
        found[hash_part] = data[entry.end() : position] if length else None
    if position != len(data):
        raise NarinfoListFormatError(f"{len(data) - position} bytes after the last entry")
    return found
