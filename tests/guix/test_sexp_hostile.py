"""Hostile s-expressions: each attack class gets a SexpError naming the problem, never a crash.

Signatures arrive from untrusted peers inside narinfos and key files come from disk, so the
reader must stay bounded in time and memory and refuse clearly.
"""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pcache.errors import SexpError
from p2pcache.guix.sexp import MAX_SEXP_DEPTH, MAX_SEXP_SIZE, parse_sexp


def refuse(data, match):
    with pytest.raises(SexpError, match=match):
        parse_sexp(data)


# --- deep nesting ------------------------------------------------------------------------------


def test_nesting_up_to_the_limit_is_read():
    text = "(" * MAX_SEXP_DEPTH + ")" * MAX_SEXP_DEPTH
    sexp = parse_sexp(text)
    for _ in range(MAX_SEXP_DEPTH - 1):
        (sexp,) = sexp
    assert sexp == ()


def test_nesting_beyond_the_limit_is_refused():
    refuse("(" * (MAX_SEXP_DEPTH + 1) + ")" * (MAX_SEXP_DEPTH + 1), "nested deeper than 64")


def test_a_wall_of_open_parentheses_fails_fast_without_recursion():
    start = time.perf_counter()
    refuse(b"(" * (MAX_SEXP_SIZE - 1), "nested deeper")
    refuse(b"(" * (MAX_SEXP_SIZE - 1), "nested deeper")
    assert time.perf_counter() - start < 1


def test_custom_depth_limit():
    with pytest.raises(SexpError, match="deeper than 2"):
        parse_sexp("(((a)))", max_depth=2)


# --- huge length prefix ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [b"(999999999:a)", b"(5:abc)", b"(2:", b"(4:ab)"],
)
def test_length_prefix_beyond_the_input_is_refused(text):
    refuse(text, "exceeds the")


def test_absurdly_long_length_prefix_is_refused():
    refuse(b"(" + b"9" * 5000 + b":a)", "length prefix is too long")
    # libgcrypt's atoi would wrap 4294967299 to 3 and read "abc".
    refuse(b"(4294967299:abc)", "length prefix is too long")


def test_a_length_prefix_can_swallow_the_closing_parenthesis():
    refuse(b"(1:)", "unterminated list")


def test_length_prefix_with_leading_zero_is_refused():
    refuse(b"(0:)", "may not begin with 0")
    refuse(b"(03:abc)", "may not begin with 0")


def test_length_prefix_followed_by_something_else_is_refused():
    refuse(b"(3abc)", "invalid length")
    refuse(b"(3", "length prefix at the end")


def test_oversized_input_is_refused_before_reading():
    refuse(b"(a " + b"#00#" * (MAX_SEXP_SIZE // 4) + b")", "more than the 65536 allowed")


def test_atom_longer_than_libgcrypt_can_store_is_refused():
    atom = b"a" * 0x10000
    with pytest.raises(SexpError, match="longer than 65535"):
        parse_sexp(b"(" + atom + b")", max_size=1 << 20)
    with pytest.raises(SexpError, match="longer than 65535"):
        parse_sexp(b"(65536:" + atom + b")", max_size=1 << 20)


# --- unterminated string, hex, base64, list -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b'(a "bc)', "unterminated quoted string"),
        (b'(a "bc\\', "unterminated quoted string"),
        (b"(a #6162)", "bad character in hex"),
        (b"(a #6162", "unterminated hex"),
        (b"(a |YWJj)", "bad character in base64"),
        (b"(a |YWJj", "unterminated base64"),
        (b"(a (b)", "unterminated list"),
        (b"(a", "unterminated list"),
        (b"(", "unterminated list"),
    ],
)
def test_unterminated_items_are_refused(text, match):
    refuse(text, match)


def test_unterminated_string_after_the_list_is_refused():
    # libgcrypt silently drops it; we refuse anything after the expression.
    refuse(b'(a) "bc', "trailing data")


# --- bad escapes and bad atoms -------------------------------------------------------------------


@pytest.mark.parametrize(
    "escape",
    [rb"\q", rb"\c", rb"\1", rb"\12", rb"\18a", rb"\x4", rb"\xg0", rb"\ "],
)
def test_bad_escapes_are_refused(escape):
    refuse(b'(a "' + escape + b'")', "bad .*escape")


def test_odd_hex_is_refused():
    refuse(b"(a #616#)", "odd number of hex digits")
    refuse(b"(a #6 16#)", "odd number of hex digits")


@pytest.mark.parametrize("body", [b"YWJ", b"YW==Jj", b"Y===", b"====", b"YWJj=", b"QQ==QQ=="])
def test_non_canonical_base64_is_refused(body):
    refuse(b"(a |" + body + b"|)", "not canonical")


def test_display_hints_are_refused():
    refuse(b"(a [text/plain]b)", "display hints")


@pytest.mark.parametrize("char", [b"{", b"&", b"\\"])
def test_reserved_punctuation_is_refused(char):
    refuse(b"(a " + char + b")", "reserved punctuation")


@pytest.mark.parametrize("char", [b"'", b"%", b"!", b"@", b"]", b"\x7f", b"\x01"])
def test_stray_characters_are_refused(char):
    refuse(b"(a " + char + b")", "unexpected byte|display hints")


# --- trailing garbage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [b"(a)(b)", b"(a) b", b"(a) b ", b"(a))", b"(a) #00#", b"(a) |YQ==|", b"(a)\x00"],
)
def test_anything_after_the_expression_is_refused(text):
    refuse(text, "trailing data")


@pytest.mark.parametrize("text", [b"a", b"a (b)", b")(", b"#00#", b"3:abc"])
def test_the_expression_must_be_a_list(text):
    refuse(text, "expected '\\('")


# --- non-ASCII ------------------------------------------------------------------------------


def test_non_ascii_bytes_outside_strings_are_refused():
    refuse(b"(a \xe9)", "unexpected byte 0xe9")
    refuse("(a é)", "unexpected byte 0xe9")


def test_characters_beyond_iso_8859_1_are_refused():
    refuse('(a "€")', "outside ISO-8859-1")


def test_nul_is_refused_where_libgcrypt_would_misread_it():
    refuse("(a \0)", "NUL character")  # Guile cannot even hand this to libgcrypt
    refuse(b"(a \x00)", "unexpected byte 0x00")
    assert parse_sexp(b'(a "\x00")') == (b"a", b"\x00")  # inside a string it is just a byte
    assert parse_sexp(b"(a 1:\x00)") == (b"a", b"\x00")


# --- empty ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"", "", b" \t\r\n\v\f"])
def test_empty_input_is_refused(text):
    refuse(text, "empty input")


# --- anything at all ---------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_sexp_error(data):
    try:
        result = parse_sexp(data)
    except SexpError:
        return
    assert isinstance(result, tuple)


@given(st.text(alphabet='()abc #|"\\019:xYW=\n[]', max_size=60))
def test_sexp_like_text_parses_or_raises_sexp_error(text):
    try:
        result = parse_sexp(text)
    except SexpError:
        return
    assert isinstance(result, tuple)


def test_strings_full_of_escapes_are_read_in_linear_time():
    start = time.perf_counter()
    atom = parse_sexp(b'(a "' + b'\\"' * 30000 + b'")')[1]
    assert atom == b'"' * 30000
    refuse(b'(a "' + b"\\n" * 30000, "unterminated quoted string")
    assert time.perf_counter() - start < 1
