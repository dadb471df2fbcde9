"""The list a node answers `GET /p2p/v1/checkpoints` with: signed checkpoint notes, framed.

A signed note runs to its end (its signature lines have no terminator of their own), so notes
are framed by length (protocol/peer-api.md):

    p2pcache-checkpoints/v1 <count>\\n
    <length of note 1 in decimal>\\n<note 1 bytes>
    ...

1 <= count <= MAX_LISTED_CHECKPOINTS, every length from 1 to MAX_CHECKPOINT_SIZE without
leading zeros, nothing after the last note, the whole at most MAX_CHECKPOINT_LIST_SIZE. The
notes are not parsed here: whose they are and whether they verify is gossip's business.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from p2pcache.errors import FormatError
from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE

HEADER = b"p2pcache-checkpoints/v1"
MAX_LISTED_CHECKPOINTS = 256
"""Builder logs one node tracks: a trust file names a few dozen builders at most."""
MAX_CHECKPOINT_LIST_SIZE = 1 << 20
"""Real checkpoints are 200-600 bytes with a few cosignatures; a server lists fewer beyond this."""

_HEADER_LINE = re.compile(rb"p2pcache-checkpoints/v1 ([1-9][0-9]{0,2})\n")
_LENGTH_LINE = re.compile(rb"(0|[1-9][0-9]{0,5})\n")


class CheckpointListFormatError(FormatError):
    """A checkpoint list is malformed or oversized."""


def render_checkpoint_list(notes: Sequence[bytes]) -> bytes:
    """The framed list of as many of `notes` (in order) as fit the list's bounds."""
    parts = []
    size = len(HEADER) + 5
    for note in notes[:MAX_LISTED_CHECKPOINTS]:
        if not 1 <= len(note) <= MAX_CHECKPOINT_SIZE:
            raise ValueError(f"a checkpoint note of {len(note)} bytes cannot be listed")
        framed = b"%d\n%s" % (len(note), note)
        if size + len(framed) > MAX_CHECKPOINT_LIST_SIZE:
            break
        parts.append(framed)
        size += len(framed)
    if not parts:
        raise ValueError("a checkpoint list holds at least one note")
    return b"%s %d\n" % (HEADER, len(parts)) + b"".join(parts)


def parse_checkpoint_list(data: bytes) -> list[bytes]:
    """The notes of a list, each as bytes; raises CheckpointListFormatError for anything else."""
    if len(data) > MAX_CHECKPOINT_LIST_SIZE:
        raise CheckpointListFormatError(
            f"a checkpoint list of {len(data)} bytes is over {MAX_CHECKPOINT_LIST_SIZE}"
        )
    header = _HEADER_LINE.match(data)
    if header is None:
        raise CheckpointListFormatError(
            f"a checkpoint list starts with '{HEADER.decode()} <count>' (1 to 999)"
        )
    count = int(header.group(1))
    if count > MAX_LISTED_CHECKPOINTS:
        raise CheckpointListFormatError(
            f"a checkpoint list holds at most {MAX_LISTED_CHECKPOINTS} notes, not {count}"
        )
    notes, position = [], header.end()
    for _ in range(count):
        length_line = _LENGTH_LINE.match(data, position)
        if length_line is None:
            raise CheckpointListFormatError(f"no canonical note length at byte {position}")
        length = int(length_line.group(1))
        if not 1 <= length <= MAX_CHECKPOINT_SIZE:
            raise CheckpointListFormatError(f"a listed note of {length} bytes is not allowed")
        position = length_line.end()
        if position + length > len(data):
            raise CheckpointListFormatError("the checkpoint list is truncated")
        notes.append(data[position : position + length])
        position += length
    if position != len(data):
        raise CheckpointListFormatError("the checkpoint list has bytes after its last note")
    return notes
