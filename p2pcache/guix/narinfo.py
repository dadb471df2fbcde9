"""The narinfo format: parsed the way Guix parses it, written the way `guix publish` writes it.

Parsing follows guix/records.scm (`recutils->alist`) and guix/narinfo.scm (`read-narinfo`,
`narinfo-maker`) rather than a tidier grammar, because a narinfo Guix accepts must be one we
accept and vice versa: unknown fields are ignored, single-valued fields take their first
occurrence, URL/Compression/FileSize are zipped by position, a value is trimmed on the left
only (Guile's `string-trim`), and any line that is not blank, a comment, a continuation or a
field is an "unmatched line" error.

A parsed narinfo keeps its exact bytes, and the bytes of its signed part (everything before the
first occurrence of `Signature:`), so an upstream narinfo can be relayed with its signature
intact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from p2pcache.errors import NarinfoFormatError, Nix32Error
from p2pcache.guix import nix32

# A narinfo lists its references; real items have up to a few hundred (~60 bytes each). 1 MiB
# is far above any real narinfo and still small enough to hold in memory per request.
MAX_NARINFO_SIZE = 1 << 20

SIGNATURE_MARKER = "Signature:"
MULTI_VALUED_FIELDS = ("URL", "Compression", "FileSize", "FileHash")

# Unicode White_Space, which is what Guile's char-set:whitespace holds (str.isspace() also
# counts the information separators U+001C..U+001F, which Guile does not trim).
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _starts_field(c: str) -> bool:
    # Guile's char-set:upper-case / char-set:lower-case (Unicode, not only ASCII), or '%'.
    return c == "%" or c.isupper() or c.islower()


def parse_fields(text: str) -> list[tuple[str, str]]:
    """Read a recutils-style record into (name, value) pairs in file order.

    Mirrors Guix's `recutils->alist`: leading blank lines are skipped, the record ends at the
    first blank line after a field, `#` starts a comment, `+` continues the previous value.
    """
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # read-line returns no empty line after the final newline
    fields: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            if fields:
                break
            continue
        first = line[0]
        if _starts_field(first):
            colon = line.find(":")
            if colon < 0:
                raise NarinfoFormatError(f"narinfo field line has no colon: {line[:80]!r}")
            fields.append((line[:colon], line[colon + 1 :].lstrip(_WHITESPACE)))
        elif first == "#":
            continue
        elif first == "+":
            if not fields:
                raise NarinfoFormatError("narinfo continuation line before any field")
            rest = line[2:] if line.startswith("+ ") else line[1:]
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{rest}")
        else:
            raise NarinfoFormatError(f"unmatched line in narinfo: {line[:80]!r}")
    return fields


_ASCII_GRAPHIC_RUN = re.compile(r"[!-~]+")


def _tokenize(value: str) -> tuple[str, ...]:
    """Guile's `string-tokenize` with its default set: runs of graphic characters."""
    if value.isascii():
        # The usual case, and a hot one (the references of every narinfo a node reads):
        # the ASCII graphic characters are exactly "!" to "~".
        return tuple(_ASCII_GRAPHIC_RUN.findall(value))
    tokens: list[str] = []
    current: list[str] = []
    for c in value:
        if c.isprintable() and not c.isspace():
            current.append(c)
        elif current:
            tokens.append("".join(current))
            current = []
    if current:
        tokens.append("".join(current))
    return tuple(tokens)


MAX_NUMBER_DIGITS = 20
"""A byte count has at most 20 significant digits (2**64 has 20); Guile reads any number of
them, but a longer one is no size of anything, and Python's int() refuses more than 4,300."""


def _to_number(value: str) -> int | None:
    """A decimal field as Guile's `string->number` would read a byte count (else None)."""
    if (
        value
        and value.isascii()
        and value.isdigit()
        and len(value.lstrip("0")) <= MAX_NUMBER_DIGITS
    ):
        return int(value)
    return None


@dataclass(frozen=True, slots=True)
class NarURL:
    """One URL/Compression/FileSize group: where a form of the NAR can be downloaded."""

    url: str
    compression: str
    file_size: int | None


@dataclass(frozen=True, slots=True)
class Narinfo:
    """A narinfo as Guix sees it, plus its exact bytes.

    Values are kept as Guix keeps them (strings, `None` where Guix has #f); `check_narinfo`
    validates them for use as an item we may fetch and serve.
    """

    store_path: str | None
    nar_hash: str | None
    nar_size: int | None
    references: tuple[str, ...] | None
    deriver: str | None
    system: str | None
    signature: str | None
    urls: tuple[NarURL, ...]
    raw: bytes
    signed_part: bytes | None

    @property
    def hash_part(self) -> str | None:
        if self.store_path is None:
            return None
        base = self.store_path.rsplit("/", 1)[-1]
        return base.partition("-")[0]


def parse_narinfo(data: bytes, *, max_size: int = MAX_NARINFO_SIZE) -> Narinfo:
    """Parse narinfo bytes as Guix's `read-narinfo` does; bounded by `max_size`."""
    if len(data) > max_size:
        raise NarinfoFormatError(f"narinfo is {len(data)} bytes, more than the {max_size} allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NarinfoFormatError(f"narinfo is not valid UTF-8 (byte {e.start})") from None
    fields = parse_fields(text)

    def first(name: str) -> str | None:
        for key, value in fields:
            if key == name:
                return value
        return None

    def every(name: str) -> list[str]:
        return [value for key, value in fields if key == name]

    urls, compressions, sizes = every("URL"), every("Compression"), every("FileSize")
    file_sizes = [_to_number(s) for s in sizes] if sizes else [None] * len(urls)
    groups = tuple(
        NarURL(url, comp, size)
        for url, comp, size in zip(urls, compressions, file_sizes, strict=False)
    )
    references = first("References")
    deriver = first("Deriver")
    nar_size = first("NarSize")
    marker = data.find(SIGNATURE_MARKER.encode())
    return Narinfo(
        store_path=first("StorePath"),
        nar_hash=first("NarHash"),
        nar_size=_to_number(nar_size) if nar_size is not None else None,
        references=_tokenize(references) if references is not None else None,
        deriver=deriver or None,
        system=first("System"),
        signature=first("Signature"),
        urls=groups,
        raw=data,
        signed_part=data[:marker] if marker >= 0 else None,
    )


def parse_nar_hash(value: str) -> bytes:
    """Decode `sha256:<52 nix32>` into the 32-byte digest; anything else is an error."""
    algo, colon, encoded = value.partition(":")
    if not colon or algo != "sha256":
        raise NarinfoFormatError(f"NarHash {value[:80]!r} is not of the form sha256:<nix32>")
    if len(encoded) != nix32.encoded_length(32):
        raise NarinfoFormatError(f"NarHash {value[:80]!r} does not hold a 32-byte digest")
    try:
        return nix32.decode(encoded)
    except Nix32Error as e:
        raise NarinfoFormatError(f"NarHash {value[:80]!r}: {e}") from None


def format_nar_hash(digest: bytes) -> str:
    """`sha256:<nix32>` for a 32-byte SHA-256 digest."""
    if len(digest) != 32:
        raise ValueError("a NarHash is a 32-byte SHA-256 digest")
    return "sha256:" + nix32.encode(digest)


def _check_value(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise NarinfoFormatError(f"narinfo {name} value contains a line break")
    if value != value.strip():
        raise NarinfoFormatError(f"narinfo {name} value {value[:60]!r} has surrounding spaces")
    return value


def render_signed_part(
    store_path: str,
    nar_hash: str,
    nar_size: int,
    references: Iterable[str],
    deriver: str | None = None,
) -> bytes:
    """The fields `guix publish` signs, in its order and byte layout.

    `references` and `deriver` are basenames. An empty reference list is written as
    `References: ` with its trailing space, which is part of the signed bytes.
    """
    refs = " ".join(_check_value("References", r) for r in references)
    lines = [
        f"StorePath: {_check_value('StorePath', store_path)}\n",
        f"NarHash: {_check_value('NarHash', nar_hash)}\n",
        f"NarSize: {int(nar_size)}\n",
        f"References: {refs}\n",
    ]
    if deriver:
        lines.append(f"Deriver: {_check_value('Deriver', deriver)}\n")
    return "".join(lines).encode()


def render_url_groups(groups: Iterable[NarURL]) -> bytes:
    """URL/Compression/FileSize groups; FileSize must be given for all groups or for none."""
    groups = list(groups)
    with_size = [g.file_size is not None for g in groups]
    if any(with_size) and not all(with_size):
        raise NarinfoFormatError(
            "FileSize must be given for every URL group or for none (Guix zips them by position)"
        )
    out = []
    for g in groups:
        out.append(f"URL: {_check_value('URL', g.url)}\n")
        out.append(f"Compression: {_check_value('Compression', g.compression)}\n")
        if g.file_size is not None:
            out.append(f"FileSize: {int(g.file_size)}\n")
    return "".join(out).encode()


def render_own_url_groups(basename: str, nar_size: int, zstd_file_size: int | None) -> bytes:
    """The URL groups a node writes for its own items, as `render_url_groups` would.

    The zstd group (when the NAR is cached) then the uncompressed one, each with FileSize.
    One format instead of building NarURL objects: this runs on every narinfo answered from
    the cache index (2026-11-25, 1M items, random keys: 3 us of ~25 us a request).
    """
    _check_value("URL", basename)
    if zstd_file_size is None:
        return b"URL: nar/%s\nCompression: none\nFileSize: %d\n" % (basename.encode(), nar_size)
    return (
        b"URL: nar/zstd/%s\nCompression: zstd\nFileSize: %d\nURL: nar/%s\nCompression: none\n"
        b"FileSize: %d\n" % (basename.encode(), zstd_file_size, basename.encode(), nar_size)
    )


def render_signature_line(signature_value: str) -> bytes:
    """`Signature: <value>\\n`, where the value is `1;<host>;<base64>`."""
    return f"Signature: {_check_value('Signature', signature_value)}\n".encode()


def render_narinfo(signed_part: bytes, signature_line: bytes, groups: Iterable[NarURL]) -> bytes:
    """A whole narinfo in `guix publish`'s layout: signed part, Signature line, URL groups."""
    return signed_part + signature_line + render_url_groups(groups)


def nar_url(basename: str, compression: str, nar_path: str = "nar") -> str:
    """The relative URL of a NAR as `guix publish` writes it (`nar/<basename>` for none)."""
    if compression == "none":
        return f"{nar_path}/{basename}"
    return f"{nar_path}/{compression}/{basename}"
