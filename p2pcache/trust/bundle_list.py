"""The container a node answers `GET /p2p/v1/attestations/<hash>` with: several bundles, framed.

A bundle (attestation_bundle.py) ends with a signed note that runs to its end, so bundles
cannot simply be concatenated. The list is (protocol/peer-api.md):

    p2pcache-bundles/v1 <count>\\n
    <length of bundle 1 in decimal>\\n<bundle 1 bytes>
    <length of bundle 2 in decimal>\\n<bundle 2 bytes>
    ...

with 1 <= count <= MAX_BUNDLES, every length from 1 to MAX_BUNDLE_SIZE without leading zeros,
nothing after the last bundle, and the whole at most MAX_BUNDLE_LIST_SIZE bytes. The bundles
themselves are not parsed here: that, and checking them, is the verifier's job.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pcache.errors import FormatError
from p2pcache.trust.attestation_bundle import MAX_BUNDLE_SIZE

HEADER = b"p2pcache-bundles/v1"
MAX_BUNDLES = 32
"""One item's bundles: this node's own and those it carries (bundle_store.MAX_CARRIED_PER_ITEM)."""
MAX_BUNDLE_LIST_SIZE = 4 << 20
"""Real bundles are 2-3 KiB; a list of oversized ones is cut here (a server sends fewer)."""


class BundleListFormatError(FormatError):
    """A bundle list is malformed or oversized."""


def render_bundle_list(bundles: Sequence[bytes]) -> bytes:
    """The list of `bundles` (each non-empty, at most MAX_BUNDLE_SIZE; at most MAX_BUNDLES)."""
    if not 1 <= len(bundles) <= MAX_BUNDLES:
        raise ValueError(f"a bundle list holds 1 to {MAX_BUNDLES} bundles, not {len(bundles)}")
    parts = [b"%s %d\n" % (HEADER, len(bundles))]
    for bundle in bundles:
        if not 1 <= len(bundle) <= MAX_BUNDLE_SIZE:
            raise ValueError(f"a bundle of {len(bundle)} bytes cannot be listed")
        parts.append(b"%d\n" % len(bundle))
        parts.append(bundle)
    data = b"".join(parts)
    if len(data) > MAX_BUNDLE_LIST_SIZE:
        raise ValueError(f"the bundle list would be {len(data)} bytes")
    return data


def bundle_list_size(bundle_sizes: Sequence[int]) -> int:
    """How many bytes the list of bundles of these sizes takes (to fit a list under the cap)."""
    header = len(HEADER) + 2 + len(str(len(bundle_sizes)))
    return header + sum(len(str(n)) + 1 + n for n in bundle_sizes)


def parse_bundle_list(data: bytes, *, max_size: int = MAX_BUNDLE_LIST_SIZE) -> list[bytes]:
    """The bundles of a list, each as bytes; raises BundleListFormatError for anything else."""
    if len(data) > max_size:
        raise BundleListFormatError(f"a bundle list of {len(data)} bytes is over {max_size}")
    line, position = _line(data, 0, len(HEADER) + 4)
    name, _, count_text = line.partition(b" ")
    if name != HEADER:
        raise BundleListFormatError(f"a bundle list starts with {HEADER.decode()!r}")
    count = _decimal(count_text, "bundle count")
    if not 1 <= count <= MAX_BUNDLES:
        raise BundleListFormatError(f"a bundle list holds 1 to {MAX_BUNDLES} bundles, not {count}")
    bundles = []
    for _ in range(count):
        length_text, position = _line(data, position, len(str(MAX_BUNDLE_SIZE)))
        length = _decimal(length_text, "bundle length")
        if not 1 <= length <= MAX_BUNDLE_SIZE:
            raise BundleListFormatError(f"a listed bundle of {length} bytes is not allowed")
        if position + length > len(data):
            raise BundleListFormatError("the bundle list is truncated")
        bundles.append(data[position : position + length])
        position += length
    if position != len(data):
        raise BundleListFormatError("the bundle list has bytes after its last bundle")
    return bundles


def _line(data: bytes, position: int, max_length: int) -> tuple[bytes, int]:
    end = data.find(b"\n", position, position + max_length + 1)
    if end < 0:
        raise BundleListFormatError(f"the bundle list has no line end after byte {position}")
    return data[position:end], end + 1


def _decimal(text: bytes, what: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text.startswith(b"0")):
        raise BundleListFormatError(f"the {what} {text[:20]!r} is not a canonical decimal")
    return int(text)
