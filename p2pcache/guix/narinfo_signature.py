"""Narinfo signatures: made as `guix publish` makes them, judged as `guix substitute` judges them.

Signing (spec §3.4; publish.scm `signed-string`, pki.scm `signature-sexp`): the signed text is
the narinfo up to its Signature line, its SHA-256 goes into
`(data (flags rfc6979) (hash sha256 #…#))`, libgcrypt's ECDSA signature into
`(sig-val (ecdsa (r …) (s …)))`, and the three with the signer's public key into
`(signature DATA SIG-VAL PUBLIC-KEY)`, printed in libgcrypt's advanced format and
base64-encoded into `Signature: 1;<host>;<base64>`. Same key and body give byte-identical
fields to libgcrypt's.

Verification follows narinfo.scm (`read-narinfo`, `narinfo-signature->canonical-sexp`,
`narinfo-sha256`, `valid-narinfo?`) and pki.scm (`%signature-status`), with libgcrypt's
`gcry_pk_verify` modelled for the one key shape an ACL entry can have here. Where Guix raises
an exception instead of giving a verdict, the verdict here is the one the oracle reports
(parse-error for an unreadable narinfo or signed part) or invalid-signature (any error from
libgcrypt, or from guile-gcrypt reading a malformed `hash` list).

Known differences, all on inputs no Guix signer produces, and all refusing what Guix might
accept, never the reverse (test_signature_interop checks each against the oracle):

* signature texts libgcrypt reads leniently but `sexp.parse_sexp` refuses (data after the
  expression, display hints, non-canonical base64, a lone token) count as unsigned;
* characters beyond ISO-8859-1 in the signature text count as unsigned, where Guile would
  first transliterate them through iconv ("€" becomes "EUR");
* a key whose point has a small-order component (never d·G), a sig-val naming GOST or SM2,
  and hash algorithms named by OID give invalid-signature.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from enum import StrEnum
from fractions import Fraction
from typing import NamedTuple

from p2pcache.errors import NarinfoFormatError, SexpError, SignatureError
from p2pcache.guix import ed25519_ecdsa
from p2pcache.guix.narinfo import (
    SIGNATURE_MARKER,
    Narinfo,
    parse_fields,
    parse_narinfo,
    render_signature_line,
    render_url_groups,
)
from p2pcache.guix.sexp import Sexp, find_token, nth_data, parse_sexp, to_advanced
from p2pcache.guix.signing_key import GuixPublicKey, GuixSecretKey


class SignatureStatus(StrEnum):
    """Verdicts of `%signature-status`, plus the oracle's unsigned and parse-error."""

    VALID = "valid-signature"
    INVALID = "invalid-signature"
    HASH_MISMATCH = "hash-mismatch"
    UNAUTHORIZED_KEY = "unauthorized-key"
    CORRUPT = "corrupt-signature"
    UNSIGNED = "unsigned"
    PARSE_ERROR = "parse-error"


# narinfo.scm `narinfo-sha256`: without these above the signature, a narinfo is unsigned.
MANDATORY_SIGNED_FIELDS = ("StorePath", "NarHash", "References")
SIGNATURE_VERSION = "1"
URL_GROUP_FIELDS = frozenset({"URL", "Compression", "FileSize", "FileHash"})


# --- signing ----------------------------------------------------------------------------------


def _mpi(value: int) -> bytes:
    """libgcrypt's `%M`: unsigned big-endian, minimal length."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def signature_sexp(digest: bytes, key: GuixSecretKey) -> Sexp:
    """`(signature (data …) (sig-val (ecdsa (r …) (s …))) (public-key …))` for a digest.

    The data list is guile-gcrypt's `bytevector->hash-data` for an ECC key; the structure is
    what `signature-sexp` gets back from libgcrypt after pasting the three parts together.
    """
    r, s = ed25519_ecdsa.sign(digest, key.d)
    return (
        b"signature",
        (b"data", (b"flags", b"rfc6979"), (b"hash", b"sha256", digest)),
        (b"sig-val", (b"ecdsa", (b"r", _mpi(r)), (b"s", _mpi(s)))),
        key.public.to_sexp(),
    )


def signature_field(signed_part: bytes, key: GuixSecretKey, host: str) -> str:
    """The `Signature:` value `1;<host>;<base64>` for the signed part of a narinfo.

    `signed_part` is the exact text Guix will hash: every line above the Signature line,
    each ending with LF, and nothing containing "Signature:" (Guix cuts at its first
    occurrence). `host` is informational (the client ignores it) and may not contain ";".
    """
    if not signed_part.endswith(b"\n"):
        raise SignatureError("the signed part of a narinfo must end with a line feed")
    if SIGNATURE_MARKER.encode() in signed_part:
        raise SignatureError('the signed part contains "Signature:", where Guix would cut it short')
    try:
        signed_part.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError("the signed part is not UTF-8, so Guix could not read it") from None
    if ";" in host or not host.isprintable() or host != host.strip():
        raise SignatureError(f"host name {host!r} cannot go into a Signature field")
    text = to_advanced(signature_sexp(hashlib.sha256(signed_part).digest(), key))
    encoded = binascii.b2a_base64(text.encode("utf-8"), newline=False).decode("ascii")
    return f"{SIGNATURE_VERSION};{host};{encoded}"


def sign_narinfo(data: bytes, key: GuixSecretKey, host: str) -> bytes:
    """`data` signed with `key`: its signed fields, a new Signature line, its URL groups.

    The signed fields are kept byte for byte: everything before an existing Signature line,
    or, in an unsigned narinfo, everything before the first URL/Compression/FileSize/FileHash
    line. They must include StorePath, NarHash and References, and no URL group (a narinfo
    whose signed part holds its URLs cannot be re-served with other URLs).
    """
    try:
        narinfo = parse_narinfo(data)
    except NarinfoFormatError as e:
        raise SignatureError(f"cannot sign an unreadable narinfo: {e}") from None
    if narinfo.signed_part is not None:
        signed_part = narinfo.signed_part
        if signed_part and not signed_part.endswith(b"\n"):
            raise SignatureError('"Signature:" occurs inside a line of this narinfo')
    else:
        signed_part = _lines_before_url_groups(data)
    names = {name for name, _ in parse_fields(signed_part.decode("utf-8"))}
    missing = [name for name in MANDATORY_SIGNED_FIELDS if name not in names]
    if missing:
        raise SignatureError(
            f"narinfo lacks {', '.join(missing)} above its signature; Guix would call it unsigned"
        )
    if names & URL_GROUP_FIELDS:
        raise SignatureError("narinfo has URL groups inside its signed part (old layout)")
    try:
        groups = render_url_groups(narinfo.urls)
    except NarinfoFormatError as e:
        raise SignatureError(f"cannot sign this narinfo: {e}") from None
    field = signature_field(signed_part, key, host)
    return signed_part + render_signature_line(field) + groups


def _lines_before_url_groups(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    for i, line in enumerate(lines):
        name, colon, _ = line.partition(b":")
        if colon and name.decode("latin-1") in URL_GROUP_FIELDS:
            return b"".join(lines[:i])
    return data


# --- verification: the narinfo level (narinfo.scm) ------------------------------------------


def verify_narinfo(data: bytes, authorized: Sequence[GuixPublicKey]) -> SignatureStatus:
    """Judge a narinfo's signature as `guix substitute` does, against the authorized keys."""
    try:
        narinfo = parse_narinfo(data)
    except NarinfoFormatError:
        return SignatureStatus.PARSE_ERROR
    return verify_parsed_narinfo(narinfo, authorized).status


class NarinfoVerdict(NamedTuple):
    status: SignatureStatus
    signed_fields: frozenset[str]
    """The names of the fields in the signed part (empty when it is absent or unreadable),
    read once here for callers with rules of their own about them."""


def verify_parsed_narinfo(narinfo: Narinfo, authorized: Sequence[GuixPublicKey]) -> NarinfoVerdict:
    """`verify_narinfo` for a narinfo already parsed (a caller that needs it parsed anyway
    saves parsing it twice); the verdict comes with the signed part's field names."""
    if narinfo.signed_part is None:
        return NarinfoVerdict(SignatureStatus.UNSIGNED, frozenset())
    try:  # narinfo-sha256 reads the signed part whether or not a Signature field follows
        fields = parse_fields(narinfo.signed_part.decode("utf-8"))
    except NarinfoFormatError:  # e.g. "Signature:" cut a line before its colon
        return NarinfoVerdict(SignatureStatus.PARSE_ERROR, frozenset())
    names = frozenset(name for name, _ in fields)
    if narinfo.signature is None or not all(name in names for name in MANDATORY_SIGNED_FIELDS):
        return NarinfoVerdict(SignatureStatus.UNSIGNED, names)
    signature = decode_signature_field(narinfo.signature)
    if signature is None:
        return NarinfoVerdict(SignatureStatus.UNSIGNED, names)
    digest = hashlib.sha256(narinfo.signed_part).digest()
    return NarinfoVerdict(signature_status(signature, digest, authorized), names)


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_SEXP_WHITESPACE = " \t\v\f\r\n"


def decode_signature_field(value: str) -> tuple[Sexp, ...] | None:
    """The signature s-expression of a Signature field, or None where Guix gets #f.

    narinfo.scm: split on ";" into exactly three parts, the first a Scheme number equal to 1,
    the third strict base64 (guile-gcrypt's decoder) of UTF-8 text that libgcrypt parses.
    Any failure is caught by `false-if-exception`, and the narinfo counts as unsigned. Text
    from which libgcrypt reads no expression at all (empty or only whitespace) gives `()`,
    which has no `public-key` and so reads as a corrupt signature, as in Guix.
    """
    parts = value.split(";")
    if len(parts) != 3 or not _scheme_number_is_one(parts[0]):
        return None
    if not _BASE64.fullmatch(parts[2]):
        return None
    try:
        text = binascii.a2b_base64(parts[2].encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not text.strip(_SEXP_WHITESPACE):
        return ()
    usual = _as_libgcrypt_prints_it(text)
    if usual is not None:
        return usual
    try:
        return parse_sexp(text)
    except SexpError:
        return None


# The signature s-expression exactly as libgcrypt prints it for a Guix key (what `guix
# publish` and `guix archive` write), recognised in one match: parsing it in general was 34
# of a relayed narinfo's ~270 µs of checks, which a Guix batch of misses waits for. Anything
# else (other spacing, other atoms, lower-case hex) goes to the general reader, which gives
# the same tuple for this text (tests/guix/test_narinfo_signature.py checks both ways).
_PRINTED = (
    "(signature \n (data \n  (flags rfc6979)\n  (hash sha256 {hex})\n  )\n"
    " (sig-val \n  (ecdsa \n   (r {hex})\n   (s {hex})\n   )\n  )\n"
    " (public-key \n  (ecc \n   (curve Ed25519)\n{flags}   (q {hex})\n   )\n  )\n )\n"
)
_AS_PRINTED = re.compile(
    re.escape(_PRINTED)
    .replace(re.escape("{hex}"), "#((?:[0-9A-F]{2})+)#")
    .replace(re.escape("{flags}"), "(" + re.escape("   (flags eddsa)\n") + ")?")
)


def _as_libgcrypt_prints_it(text: str) -> tuple[Sexp, ...] | None:
    """The parsed signature if `text` is exactly libgcrypt's printing of one, else None."""
    match = _AS_PRINTED.fullmatch(text)
    if match is None:
        return None
    digest, r, s, flags, q = match.groups()
    key: tuple[Sexp, ...] = (b"ecc", (b"curve", b"Ed25519"))
    if flags:
        key += ((b"flags", b"eddsa"),)
    key += ((b"q", bytes.fromhex(q)),)
    return (
        b"signature",
        (b"data", (b"flags", b"rfc6979"), (b"hash", b"sha256", bytes.fromhex(digest))),
        (b"sig-val", (b"ecdsa", (b"r", bytes.fromhex(r)), (b"s", bytes.fromhex(s)))),
        (b"public-key", key),
    )


# --- verification: the signature level (pki.scm %signature-status) --------------------------


def signature_status(
    signature: tuple[Sexp, ...], digest: bytes, authorized: Sequence[GuixPublicKey]
) -> SignatureStatus:
    """`%signature-status` for a parsed signature and the SHA-256 of the signed text."""
    subject = find_token(signature, b"public-key")
    data = find_token(signature, b"data")
    if subject is None or data is None:
        return SignatureStatus.CORRUPT
    key = next((k for k in authorized if k.to_sexp() == subject), None)
    if key is None:
        return SignatureStatus.UNAUTHORIZED_KEY
    hash_list = find_token(data, b"hash")
    if hash_list is None:
        return SignatureStatus.HASH_MISMATCH
    algorithm = nth_data(hash_list, 1)
    if algorithm is None or not _is_guile_token(algorithm):
        # guile-gcrypt's hash-data->bytevector calls symbol->string on it and raises.
        return SignatureStatus.INVALID
    value = nth_data(hash_list, 2)
    if value is None or value != digest or _is_guile_token(value):
        # A token-like value becomes a Scheme symbol, never equal? to the digest bytevector.
        return SignatureStatus.HASH_MISMATCH
    sig_val = find_token(signature, b"sig-val")
    if sig_val is None or not _libgcrypt_verifies(sig_val, data, hash_list, key):
        return SignatureStatus.INVALID
    return SignatureStatus.VALID


_GUILE_TOKEN_SPECIALS = frozenset("-./_:*+=0123456789")


def _is_guile_token(atom: bytes) -> bool:
    """guile-gcrypt's `token-string?`: what `canonical-sexp-nth-data` returns as a symbol.

    The atom is read as ISO-8859-1; letters are Unicode letters (so "é" counts), digits 0-9,
    plus `-./_:*+=`, and it may not start with a digit.
    """
    text = atom.decode("latin-1")
    return (
        bool(text)
        and all(c.isalpha() or c in _GUILE_TOKEN_SPECIALS for c in text)
        and not text[0].isdigit()
    )


# --- verification: libgcrypt's gcry_pk_verify for an ECC key on Ed25519 ---------------------

# _gcry_pk_util_parse_flaglist (cipher/pubkey-util.c). Flags that select an encoding are only
# valid while none is selected yet; the others set a flag or change nothing here.
_ENCODING_FLAGS = frozenset({b"pss", b"raw", b"oaep", b"pkcs1", b"pkcs1-raw"})
_RAW_FORCING_FLAGS = frozenset({b"sm2", b"gost", b"eddsa", b"djb-tweak"})
_OTHER_FLAGS = frozenset(
    {
        b"comp",
        b"nocomp",
        b"param",
        b"noparam",
        b"rfc6979",
        b"prehash",
        b"use-x931",
        b"no-keytest",
        b"no-blinding",
        b"use-fips186",
        b"use-fips186-2",
        b"transient-key",
    }
)
# Hash names `get_hash_algo` resolves: its own table (exact match), then gcry_md_map_name,
# which compares the names of the digests libgcrypt 1.10.1 was built with case-insensitively
# (checked with gcry_md_map_name; OIDs are not modelled).
_HASH_TABLE = frozenset(
    b"sha1 md5 sha256 ripemd160 rmd160 sha384 sha512 sha224 md2 md4 tiger haval sha3-224 "
    b"sha3-256 sha3-384 sha3-512 sm3 shake128 shake256 sha512-224 sha512-256".split()
)
_DIGEST_NAMES = frozenset(
    b"md4 md5 ripemd160 sha1 sha224 sha256 sha384 sha512 sha512_224 sha512_256 sha3-224 "
    b"sha3-256 sha3-384 sha3-512 shake128 shake256 tiger tiger2 whirlpool crc32 crc32rfc1510 "
    b"crc24rfc2440 gostr3411_94 gostr3411_cp stribog256 stribog512 blake2b_512 blake2b_384 "
    b"blake2b_256 blake2b_160 blake2s_256 blake2s_224 blake2s_160 blake2s_128 sm3".split()
)
_ECC_SIG_NAMES = frozenset({b"ecc", b"ecdsa", b"ecdh", b"eddsa", b"gost", b"sm2"})


def _libgcrypt_verifies(
    sig_val: tuple[Sexp, ...],
    data: tuple[Sexp, ...],
    hash_list: tuple[Sexp, ...],
    key: GuixPublicKey,
) -> bool:
    """Whether `gcry_pk_verify(sig-val, data, key)` succeeds; any error counts as failure.

    `ecc_verify` (cipher/ecc.c) reads the data with `_gcry_pk_util_data_to_mpi` and the
    signature with `_gcry_pk_util_preparse_sigval`, then runs ECDSA on the hash value.
    """
    if not _data_is_ecdsa_hash(data, hash_list):
        return False
    parameters = _ecdsa_parameters(sig_val)
    if parameters is None:
        return False
    r, s = parameters
    return ed25519_ecdsa.verify(hash_list[2], r, s, key.q)


def _data_is_ecdsa_hash(data: tuple[Sexp, ...], hash_list: tuple[Sexp, ...]) -> bool:
    """`_gcry_pk_util_data_to_mpi` takes its "raw encoding with a hash element" branch."""
    flags: set[bytes] = set()
    encoding = None
    flag_list = find_token(data, b"flags")
    if flag_list is not None:
        ignore_invalid = False
        for flag in reversed(flag_list[1:]):  # libgcrypt walks the list from its end
            if not isinstance(flag, bytes):
                continue
            if flag in _ENCODING_FLAGS and encoding is None:
                encoding = flag
                flags.add(flag)
            elif flag in _RAW_FORCING_FLAGS:
                encoding = b"raw"
                flags.add(flag)
            elif flag == b"igninvflag":
                ignore_invalid = True
            elif flag in _OTHER_FLAGS:
                flags.add(flag)
            elif not ignore_invalid:
                return False  # GPG_ERR_INV_FLAG
    if flags & {b"eddsa", b"prehash"}:
        return False  # EdDSA wants (value …); libgcrypt 1.10 refuses prehash with a hash
    if encoding in (None, b"raw"):
        if not flags & {b"raw", b"sm2", b"rfc6979"}:
            return False  # a bare (hash …) is taken only with an explicit raw or rfc6979 flag
    elif encoding != b"pss":
        return False  # pkcs1, pkcs1-raw and oaep never reach ECDSA on the hash value
    if len(hash_list) != 3 or not nth_data(hash_list, 1) or not nth_data(hash_list, 2):
        return False
    return _is_known_hash(hash_list[1])


def _is_known_hash(name: bytes) -> bool:
    if name in _HASH_TABLE:
        return True
    # gcry_md_map_name gets a C string (cut at NUL) and compares with stricmp (ASCII case).
    return name.split(b"\0", 1)[0].lower() in _DIGEST_NAMES


def _ecdsa_parameters(sig_val: tuple[Sexp, ...]) -> tuple[int, int] | None:
    """(r, s) as `_gcry_pk_util_preparse_sigval` and `sexp_extract_param "rs"` read them."""
    algorithm = _sig_val_element(sig_val, 1)
    if algorithm is not None and algorithm[0] == b"flags":
        algorithm = _sig_val_element(sig_val, 2)
    if algorithm is None:
        return None
    name = algorithm[0].split(b"\0", 1)[0]  # sexp_nth_string: a C string, compared with stricmp
    if name.lower() not in _ECC_SIG_NAMES or name in (b"eddsa", b"gost", b"sm2"):
        return None  # unknown (GPG_ERR_CONFLICT), EdDSA (conflicts with the data) or other
    values = []
    for parameter in (b"r", b"s"):
        found = find_token(algorithm, parameter)
        atom = nth_data(found, 1) if found is not None else None
        if atom is None:
            return None
        values.append(int.from_bytes(atom, "big"))
    return values[0], values[1]


def _sig_val_element(sig_val: tuple[Sexp, ...], index: int) -> tuple[Sexp, ...] | None:
    """`sexp_nth` (an atom comes back as a one-atom list) whose car is a non-empty atom."""
    if index >= len(sig_val):
        return None
    item = sig_val[index]
    element = item if isinstance(item, tuple) else (item,)
    if not element or not isinstance(element[0], bytes) or not element[0]:
        return None
    return element


# --- Guile's string->number, as far as "is it the number 1?" ---------------------------------

_RADIX_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdef"}
_RADIX_PREFIXES = {"x": 16, "d": 10, "o": 8, "b": 2}
# Guile's decimal syntax; "s", "f", "d" and "l" are exponent markers too (R5RS).
_DECIMAL = re.compile(r"[+-]?([0-9]*)(?:\.([0-9]*))?(?:[esfdl]([+-]?[0-9]+))?")
# A version field longer than this is refused outright, which keeps the arithmetic small.
_MAX_VERSION_LENGTH = 64
_MAX_EXPONENT = 400


def _scheme_number_is_one(text: str) -> bool:
    """Whether Guile's `(string->number text)` is a number `=` to 1.

    narinfo.scm accepts any such version: "1", "+1", "#x1", "1.0", "2/2", "#e1e0", "#i1",
    "1+0i", "1@0". Radix and exactness prefixes come first, in either order.
    """
    if text == "1":  # what every signer writes: no need for the general reader
        return True
    if len(text) > _MAX_VERSION_LENGTH:
        return False
    radix = exactness = None
    while len(text) >= 2 and text[0] == "#":
        letter = text[1].lower()
        if letter in _RADIX_PREFIXES and radix is None:
            radix = _RADIX_PREFIXES[letter]
        elif letter in "ei" and exactness is None:
            exactness = letter
        else:
            return False
        text = text[2:]
    real, imaginary = _scheme_complex(text.lower(), radix or 10)
    if real is None or imaginary is None:
        return False
    return _equals(real, exactness, 1) and _equals(imaginary, exactness, 0)


def _equals(parsed: tuple[Fraction, bool], exactness: str | None, target: int) -> bool:
    value, inexact = parsed
    if exactness is not None:
        inexact = exactness == "i"
    if not inexact:
        return value == target
    try:
        return float(value) == target
    except OverflowError:  # an infinite double
        return False


_ZERO = (Fraction(0), False)
# Where the imaginary part starts: a sign that is not the first character, nor (in decimal)
# the sign of an exponent.
_COMPLEX_SIGN = {10: re.compile(r"(?<=[^esfdl])[+-]")}
_ANY_SIGN = re.compile(r"[+-]")


def _scheme_complex(
    text: str, radix: int
) -> tuple[tuple[Fraction, bool] | None, tuple[Fraction, bool] | None]:
    """(real part, imaginary part) of rectangular ("a+bi") or polar ("a@b") notation.

    A polar number equals 1 exactly when its magnitude is 1 and its angle 0, so the angle is
    returned in place of the imaginary part.
    """
    if "@" in text:
        magnitude, _, angle = text.partition("@")
        return _scheme_real(magnitude, radix), _scheme_real(angle, radix)
    if not text.endswith("i"):
        return _scheme_real(text, radix), _ZERO
    signs = list(_COMPLEX_SIGN.get(radix, _ANY_SIGN).finditer(text, 1))
    split = signs[-1].start() if signs else 0
    real = _scheme_real(text[:split], radix) if split else _ZERO
    imaginary_text = text[split:-1]
    if imaginary_text in ("+", "-", ""):
        return real, (Fraction(1), False)  # "+i": the imaginary unit
    return real, _scheme_real(imaginary_text, radix)


def _scheme_real(text: str, radix: int) -> tuple[Fraction, bool] | None:
    """A real number in Scheme syntax as (its exact value, written as inexact?), else None."""
    digits = _RADIX_DIGITS[radix]
    sign = -1 if text[:1] == "-" else 1
    body = text[1:] if text[:1] in "+-" else text
    numerator, slash, denominator = body.partition("/")
    if slash:
        if not (_all_in(numerator, digits) and _all_in(denominator, digits)):
            return None
        if int(denominator, radix) == 0:
            return None
        return sign * Fraction(int(numerator, radix), int(denominator, radix)), False
    if _all_in(body, digits):
        return sign * Fraction(int(body, radix)), False
    match = _DECIMAL.fullmatch(text) if radix == 10 else None
    if match is None or not (match.group(1) or match.group(2)):
        return None
    exponent = int(match.group(3) or 0)
    if abs(exponent) > _MAX_EXPONENT:
        return None  # absurd for a version number; refused rather than computed
    fraction_digits = match.group(2) or ""
    mantissa = Fraction(int(match.group(1) + fraction_digits), 10 ** len(fraction_digits))
    return sign * mantissa * Fraction(10) ** exponent, True


def _all_in(text: str, alphabet: str) -> bool:
    return bool(text) and all(c in alphabet for c in text)
