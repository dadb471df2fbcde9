"""S-expressions as libgcrypt (and through it Guix) reads and prints them.

Guix keeps keys, ACLs and narinfo signatures as libgcrypt s-expressions (spec §3.2-§3.4). An
atom is a byte string (`bytes`), a list is a `tuple` of atoms and lists; nothing else.

Reading follows libgcrypt 1.10's `gcry_sexp_new` with auto-detection (`src/sexp.c`,
`do_vsexp_sscan`), which is one scanner for both forms: canonical (`3:abc`) and advanced
(tokens, "quoted strings" with C escapes, `#hex#`, `|base64|`, whitespace). Everything
`parse_sexp` accepts, libgcrypt reads to the same tree (the interop tests check this against
libgcrypt itself). It is deliberately stricter where libgcrypt is lax in ways that only a
hostile or broken writer would rely on, because a lenient reader is where the two could start
to disagree:

* exactly one list, surrounded by nothing but whitespace. libgcrypt keeps reading after the
  first list ("(a)(b)"), silently drops an unterminated token, string or hex atom at the very
  end, and reads "" as no expression at all (refused here; "()", which libgcrypt also reads
  as nothing, is the empty tuple here, and has no token to find either);
* no display hints (`[...]`): libgcrypt turns the hint into an ordinary atom;
* `|base64|` must be canonical base64 (groups of four, `=` padding only at the end), where
  libgcrypt's decoder also takes missing or misplaced padding;
* a length prefix must fit in the remaining input; libgcrypt converts it with `atoi`, whose
  overflow can wrap to a small length;
* a NUL byte is an error outside quoted strings and verbatim atoms (libgcrypt's `strchr`
  test makes NUL a token character).

A `str` is read the way guile-gcrypt's `string->canonical-sexp` hands it to libgcrypt: each
character becomes one ISO-8859-1 byte, and a NUL character is an error (Guile refuses to make a
C string of it). A character beyond ISO-8859-1 is an error too, where Guile would transliterate
it through iconv ("€" becomes "EUR").

Printing reproduces `_gcry_sexp_sprint` byte for byte: `to_canonical` is `GCRYSEXP_FMT_CANON`
and `to_advanced` is `GCRYSEXP_FMT_ADVANCED` (the layout of spec §3.5 "Advanced printing"),
which is what Guix writes into key files, ACLs and signatures.
"""

from __future__ import annotations

import binascii
import re
from typing import TypeAlias

from p2pcache.errors import SexpError

Sexp: TypeAlias = bytes | tuple["Sexp", ...]
"""An atom (bytes) or a list (tuple of Sexp)."""

# Keys, ACLs and signatures are a few hundred bytes; an ACL with a hundred keys is ~20 KiB.
# 64 KiB leaves room for that and bounds the work done on a hostile signature or file.
MAX_SEXP_SIZE = 64 * 1024
# Guix's deepest structure (an ACL entry) is five lists deep; 64 bounds recursion on input
# made of nothing but parentheses.
MAX_SEXP_DEPTH = 64
# libgcrypt stores an atom's length in an unsigned short (DATALEN); longer atoms corrupt it.
MAX_ATOM_SIZE = 0xFFFF

_WHITESPACE = b" \t\v\f\r\n"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset(b"01234567")
_SIMPLE_ESCAPES = {
    ord("b"): 0x08,
    ord("t"): 0x09,
    ord("v"): 0x0B,
    ord("n"): 0x0A,
    ord("f"): 0x0C,
    ord("r"): 0x0D,
    ord('"'): 0x22,
    ord("'"): 0x27,
    ord("\\"): 0x5C,
}

_RE_WHITESPACE = re.compile(rb"[ \t\v\f\r\n]*")
# Whitespace, then the next item in one of its common forms (each its own group); anything
# else is left to `_Reader.read_atom`.
_RE_NEXT_ITEM = re.compile(
    rb"[ \t\v\f\r\n]*(?:(\()|(\))|([A-Za-z\-./_:*+=][A-Za-z0-9\-./_:*+=]*)|#([0-9A-Fa-f]*)#)?"
)
_ITEM_OPEN, _ITEM_CLOSE, _ITEM_TOKEN, _ITEM_HEX = 1, 2, 3, 4
_RE_DIGITS = re.compile(rb"[0-9]+")
_RE_HEX_BODY = re.compile(rb"[0-9A-Fa-f \t\v\f\r\n]*")
_RE_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/=]*")
_RE_CANONICAL_BASE64 = re.compile(
    rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
)
# A length prefix longer than this cannot fit in MAX_SEXP_SIZE anyway.
_MAX_LENGTH_DIGITS = 9


def parse_sexp(
    data: bytes | str, *, max_size: int = MAX_SEXP_SIZE, max_depth: int = MAX_SEXP_DEPTH
) -> tuple[Sexp, ...]:
    """Read one s-expression, canonical or advanced, as libgcrypt's `gcry_sexp_new` does.

    Returns the top-level list as a tuple. Raises SexpError naming the problem and its byte
    offset for anything libgcrypt would refuse, and for the lax corners listed in the module
    docstring.
    """
    if isinstance(data, str):
        if "\0" in data:
            raise SexpError("s-expression text contains a NUL character")
        try:
            data = data.encode("latin-1")
        except UnicodeEncodeError as e:
            raise SexpError(
                f"s-expression text has a character outside ISO-8859-1 at {e.start} "
                "(libgcrypt reads single bytes)"
            ) from None
    if len(data) > max_size:
        raise SexpError(f"s-expression is {len(data)} bytes, more than the {max_size} allowed")
    return _Reader(data, max_depth).read()


class _Reader:
    """One pass over the input; `pos` only moves forward."""

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.pos = 0

    def fail(self, problem: str, at: int | None = None) -> SexpError:
        offset = self.pos if at is None else at
        return SexpError(f"invalid s-expression: {problem} at byte {offset}")

    def skip_whitespace(self) -> None:
        self.pos = _RE_WHITESPACE.match(self.data, self.pos).end()

    def read(self) -> tuple[Sexp, ...]:
        self.skip_whitespace()
        if self.pos == len(self.data):
            raise self.fail("empty input (no list)")
        if self.data[self.pos] != 0x28:  # "("
            raise self.fail("expected '(' to start the expression")
        result = self.read_list()
        self.skip_whitespace()
        if self.pos != len(self.data):
            raise self.fail("trailing data after the expression")
        return result

    def read_list(self) -> tuple[Sexp, ...]:
        # Iterative, so hostile nesting costs a list of frames and never Python's stack.
        stack: list[list[Sexp]] = [[]]
        self.pos += 1  # the "(" seen by the caller
        data = self.data
        scan = _RE_NEXT_ITEM.match
        while True:
            item = scan(data, self.pos)
            self.pos = item.end()
            kind = item.lastindex
            if kind == _ITEM_OPEN:
                if len(stack) >= self.max_depth:
                    raise self.fail(f"nested deeper than {self.max_depth} lists")
                stack.append([])
            elif kind == _ITEM_CLOSE:
                done = tuple(stack.pop())
                if not stack:
                    return done
                stack[-1].append(done)
            elif kind == _ITEM_TOKEN:
                stack[-1].append(self.checked(item.group(kind), item.start(kind)))
            elif kind == _ITEM_HEX:
                digits = item.group(kind)
                if len(digits) % 2:
                    raise self.fail("odd number of hex digits")
                stack[-1].append(bytes.fromhex(digits.decode("ascii")))
            elif self.pos >= len(data):
                raise self.fail(f"unterminated list ({len(stack)} still open)")
            else:  # the rarer forms, and errors
                stack[-1].append(self.read_atom(data[self.pos]))

    def checked(self, atom: bytes, start: int) -> bytes:
        if len(atom) > MAX_ATOM_SIZE:
            raise self.fail(f"atom of {len(atom)} bytes is longer than {MAX_ATOM_SIZE}", start)
        return atom

    def read_atom(self, c: int) -> bytes:
        start = self.pos
        if 0x31 <= c <= 0x39:  # "1".."9": a length prefix
            atom = self.read_length_prefixed()
        elif c == 0x30:
            raise self.fail("a length prefix may not begin with 0")
        elif c == 0x22:  # '"'
            atom = self.read_quoted()
        elif c == 0x23:  # "#" (hex with whitespace inside, or malformed)
            atom = self.read_hex()
        elif c == 0x7C:  # "|"
            atom = self.read_base64()
        elif c in b"[]":
            raise self.fail("display hints ([...]) are not supported")
        elif c in b"{&\\":
            raise self.fail(f"reserved punctuation {chr(c)!r}")
        else:
            raise self.fail(f"unexpected byte 0x{c:02x}")
        return self.checked(atom, start)

    def read_length_prefixed(self) -> bytes:
        digits = _RE_DIGITS.match(self.data, self.pos)
        end = digits.end()
        if end >= len(self.data):
            raise self.fail("length prefix at the end of the input")
        if end - self.pos > _MAX_LENGTH_DIGITS:
            raise self.fail("length prefix is too long")
        follower = self.data[end]
        if follower == 0x3A:  # ":" -- a verbatim atom of exactly that many bytes
            length = int(digits.group())
            if length > len(self.data) - end - 1:
                raise self.fail(
                    f"length prefix {length} exceeds the {len(self.data) - end - 1} bytes left"
                )
            self.pos = end + 1 + length
            return self.data[end + 1 : self.pos]
        # libgcrypt ignores a length written before a quoted, hex or base64 atom.
        self.pos = end
        if follower == 0x22:
            return self.read_quoted()
        if follower == 0x23:
            return self.read_hex()
        if follower == 0x7C:
            return self.read_base64()
        raise self.fail("invalid length specification", end)

    def read_quoted(self) -> bytes:
        """A "string" with libgcrypt's escapes (sexp.c: the scanner, then unquote_string)."""
        data = self.data
        i = self.pos + 1
        out = bytearray()
        quote = data.find(b'"', i)  # the closing quote, unless an escape comes first
        while True:
            if quote < 0:
                raise self.fail("unterminated quoted string")
            escape = data.find(b"\\", i, quote)
            if escape < 0:
                out += data[i:quote]
                self.pos = quote + 1
                return bytes(out)
            out += data[i:escape]
            i = self.read_escape(escape + 1, out)
            if i > quote:  # the escape swallowed that quote: look for the next one
                quote = data.find(b'"', i)

    def read_escape(self, i: int, out: bytearray) -> int:
        data = self.data
        if i >= len(data):
            raise self.fail("unterminated quoted string")
        c = data[i]
        if c in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[c])
            return i + 1
        if c in _OCTAL_DIGITS:
            digits = data[i : i + 3]
            if len(digits) < 3 or not all(d in _OCTAL_DIGITS for d in digits):
                raise self.fail("bad octal escape in quoted string", i)
            out.append(int(digits, 8) & 0xFF)  # libgcrypt stores "\777" as 0xFF
            return i + 3
        if c == 0x78:  # "x"
            digits = data[i + 1 : i + 3]
            if len(digits) < 2 or not all(d in _HEX_DIGITS for d in digits):
                raise self.fail("bad hex escape in quoted string", i)
            out.append(int(digits, 16))
            return i + 3
        if c in b"\r\n":  # an escaped line break (CR, LF, CRLF or LFCR) is dropped
            pair = b"\r\n" if c == 0x0D else b"\n\r"
            return i + 2 if data[i : i + 2] == pair else i + 1
        raise self.fail(f"bad escape \\{chr(c)!r} in quoted string", i)

    def read_hex(self) -> bytes:
        body = _RE_HEX_BODY.match(self.data, self.pos + 1)
        end = body.end()
        if end >= len(self.data):
            raise self.fail("unterminated hex atom")
        if self.data[end] != 0x23:
            raise self.fail("bad character in hex atom", end)
        digits = bytes(b for b in body.group() if b not in _WHITESPACE)
        if len(digits) % 2:
            raise self.fail("odd number of hex digits")
        self.pos = end + 1
        return bytes.fromhex(digits.decode("ascii"))

    def read_base64(self) -> bytes:
        body = _RE_BASE64_BODY.match(self.data, self.pos + 1)
        end = body.end()
        if end >= len(self.data):
            raise self.fail("unterminated base64 atom")
        if self.data[end] != 0x7C:
            raise self.fail("bad character in base64 atom", end)
        if not _RE_CANONICAL_BASE64.fullmatch(body.group()):
            raise self.fail("base64 atom is not canonical (groups of 4, '=' only at the end)")
        self.pos = end + 1
        return binascii.a2b_base64(body.group())


def to_canonical(sexp: Sexp) -> bytes:
    """The canonical encoding, as `gcry_sexp_sprint(GCRYSEXP_FMT_CANON)` writes it.

    An empty atom is written `0:`, as libgcrypt does, although libgcrypt's reader refuses a
    length prefix starting with 0.
    """
    out: list[bytes] = []
    _write_canonical(sexp, 0, out)
    return b"".join(out)


def _write_canonical(sexp: Sexp, depth: int, out: list[bytes]) -> None:
    if isinstance(sexp, bytes):
        out.append(b"%d:%s" % (len(sexp), sexp))
        return
    _check_list(sexp, depth)
    out.append(b"(")
    for item in sexp:
        _write_canonical(item, depth + 1, out)
    out.append(b")")


def to_advanced(sexp: Sexp) -> str:
    """The advanced text form, byte for byte as `gcry_sexp_sprint(GCRYSEXP_FMT_ADVANCED)`.

    One character per byte (ISO-8859-1), as guile-gcrypt's `canonical-sexp->string` returns
    it; `.encode("latin-1")` gives libgcrypt's bytes. The layout (spec §3.5): before every "("
    but the first, LF and one space per open list; after an atom, a space unless ")" follows;
    after ")", LF and indentation unless "(" or the end follows; a final LF.
    """
    if isinstance(sexp, bytes):
        return _print_atom(sexp) + " \n"  # a lone atom: followed by neither ")" nor "("
    out: list[str] = []
    _write_advanced(sexp, 0, out)
    out.append("\n")
    return "".join(out)


def _write_advanced(lst: tuple[Sexp, ...], depth: int, out: list[str]) -> None:
    """Write a list opened at indentation `depth` (the number of lists around it)."""
    _check_list(lst, depth)
    if depth:
        out.append("\n" + " " * depth)
    out.append("(")
    last = len(lst) - 1
    for i, item in enumerate(lst):
        if isinstance(item, bytes):
            out.append(_print_atom(item))
            if i != last:
                out.append(" ")
        else:
            _write_advanced(item, depth + 1, out)
            if i == last or isinstance(lst[i + 1], bytes):
                out.append("\n" + " " * (depth + 1))  # ")" then an atom or our own ")"
    out.append(")")


def _check_list(lst: object, depth: int) -> None:
    if not isinstance(lst, tuple):
        raise TypeError(f"an s-expression holds bytes and tuples, not {type(lst).__name__}")
    if depth >= MAX_SEXP_DEPTH:
        raise SexpError(f"s-expression is nested deeper than {MAX_SEXP_DEPTH} lists")


_BINARY = 0
_STRING = 1
_TOKEN = 2
# Control characters libgcrypt is willing to write as escapes in a quoted string, and NUL,
# which its strchr() test also finds in that set (the C string's terminator).
_STRING_CONTROLS = frozenset(b"\b\t\v\n\f\r\"'\\\0")
_STRING_ESCAPES = {
    0x08: "\\b",
    0x09: "\\t",
    0x0B: "\\v",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x27: "\\'",
    0x5C: "\\\\",
}


def _is_unprintable(b: int) -> bool:
    return b < 0x20 or 0x7F <= b <= 0xA0


# Bytes that make an atom binary: unprintable and not writable as a string escape.
_RE_BINARY_BYTE = re.compile(
    b"["
    + re.escape(bytes(b for b in range(256) if _is_unprintable(b) and b not in _STRING_CONTROLS))
    + b"]"
)
_RE_TOKEN_LIKE = re.compile(rb"[A-Za-z\-./_:*+=\0][A-Za-z0-9\-./_:*+=\0]*")


def _suitable_encoding(atom: bytes) -> int:
    """sexp.c `suitable_encoding`: binary (hex), string or token.

    Binary when the first byte is >= 0x80 or NUL, or when any byte is a control or
    0x7F-0xA0 byte other than the escapable ones (NUL passes that test: libgcrypt's strchr
    finds the string terminator). A token when every byte is alphanumeric or `-./_:*+=` (or
    NUL, same reason) and the first is not a digit.
    """
    if not atom:
        return _STRING
    if atom[0] & 0x80 or atom[0] == 0 or _RE_BINARY_BYTE.search(atom):
        return _BINARY
    if _RE_TOKEN_LIKE.fullmatch(atom):
        return _TOKEN
    return _STRING


def _print_atom(atom: bytes) -> str:
    kind = _suitable_encoding(atom)
    if kind == _TOKEN:
        return atom.decode("latin-1")
    if kind == _BINARY:
        return "#" + atom.hex().upper() + "#"
    parts = ['"']
    for b in atom:
        if b in _STRING_ESCAPES:
            parts.append(_STRING_ESCAPES[b])
        elif _is_unprintable(b):
            parts.append(f"\\x{b:02x}")
        else:
            parts.append(chr(b))
    parts.append('"')
    return "".join(parts)


def find_token(sexp: Sexp, name: bytes | str) -> tuple[Sexp, ...] | None:
    """The first list, depth first and starting with `sexp` itself, whose car is `name`.

    `gcry_sexp_find_token`: a linear scan of libgcrypt's tag stream for "(" followed by the
    atom, i.e. a pre-order walk. Guix finds `public-key`, `data`, `sig-val` and `hash` this
    way, wherever they are nested.
    """
    token = name.encode("latin-1") if isinstance(name, str) else name
    if not isinstance(sexp, tuple):
        return None
    stack: list[tuple[Sexp, ...]] = [sexp]
    while stack:
        lst = stack.pop()
        if lst and lst[0] == token:
            return lst
        stack.extend(item for item in reversed(lst) if isinstance(item, tuple))
    return None


def nth_data(lst: tuple[Sexp, ...], index: int) -> bytes | None:
    """Element `index` of `lst` if it is an atom, else None (`gcry_sexp_nth_data`)."""
    if 0 <= index < len(lst) and isinstance(lst[index], bytes):
        return lst[index]
    return None
