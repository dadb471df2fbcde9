"""The response classes render exactly the bytes Guix reads back, and refuse what would break them.

`http_response` is what every handler answer becomes on the wire; the server tests reach it
only through a running server. These tests check its own contract directly: the exact head
bytes (status line, Content-Length always first, Content-Type, extra headers in order, the
Connection line spliced in last), that a pre-rendered response is the same bytes as the one it
came from and that its head length cuts off exactly the head for HEAD, what `to_wire` hands the
server for GET and HEAD, that the validation refuses header injection, framing headers and
statuses that cannot carry a Content-Length body with a ValueError, and the file and stream
responses' fields. Rendered heads are read back with httptools (the parser the server itself is
built on) and http.client, so "valid HTTP/1.1" is judged by parsers we did not write.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import os
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

import httptools
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from p2pcache.server.http_response import (
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    FileResponse,
    RawResponse,
    Response,
    StreamResponse,
    render_head,
)

CONNECTIONS = [b"", CONNECTION_CLOSE, CONNECTION_KEEP_ALIVE]
TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SENDABLE_STATUSES = [
    s.value for s in HTTPStatus if 200 <= s.value <= 599 and s.value not in (204, 205, 304)
]


# A real HTTP parser to read rendered bytes back


class Parsed:
    """What httptools saw in a response; `keep_alive` is read once the head is complete."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.head_complete = False
        self.message_complete = False
        self.keep_alive: bool | None = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_complete = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.message_complete = True

    @property
    def status(self) -> int:
        return self.parser.get_status_code()

    @property
    def version(self) -> str:
        return self.parser.get_http_version()


def parse(*parts: bytes | memoryview) -> Parsed:
    """Feed the parts to httptools' response parser, as the client would receive them."""
    parsed = Parsed()
    parsed.parser.feed_data(b"".join(bytes(p) for p in parts))
    assert parsed.head_complete, "the head did not end"
    return parsed


def header_values(parsed: Parsed, name: bytes) -> list[bytes]:
    return [v for n, v in parsed.headers if n.lower() == name.lower()]


class _BytesSocket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *_args: object, **_kwargs: object) -> io.BytesIO:
        return io.BytesIO(self._data)


async def no_chunks() -> AsyncIterator[bytes]:
    for chunk in ():
        yield chunk


# Exact head bytes


def test_head_is_status_line_then_length_then_type_then_extra_headers_then_blank_line() -> None:
    response = Response(
        200,
        b"StorePath: /gnu/store/x\n",
        "application/x-nix-narinfo",
        (("Cache-Control", "max-age=60"), ("X-Peer", "a\tb")),
    )
    assert response.head() == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Length: 24\r\n"
        b"Content-Type: application/x-nix-narinfo\r\n"
        b"Cache-Control: max-age=60\r\n"
        b"X-Peer: a\tb\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (206, b"HTTP/1.1 206 Partial Content\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        (500, b"HTTP/1.1 500 Internal Server Error\r\n"),
        (503, b"HTTP/1.1 503 Service Unavailable\r\n"),
    ],
)
def test_status_line_carries_the_standard_reason_phrase(status: int, line: bytes) -> None:
    assert Response(status).head().startswith(line)


def test_empty_error_body_still_has_content_length_zero_and_default_text_type() -> None:
    assert Response(404).head() == (
        b"HTTP/1.1 404 Not Found\r\n"
        b"Content-Length: 0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize("connection", [CONNECTION_CLOSE, CONNECTION_KEEP_ALIVE])
def test_connection_line_goes_after_the_extra_headers_right_before_the_blank_line(
    connection: bytes,
) -> None:
    response = Response(200, b"x", "text/plain", (("X-A", "1"),))
    assert response.head(connection) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Type: text/plain\r\nX-A: 1\r\n"
        + connection
        + b"\r\n"
    )


def test_head_without_connection_argument_has_no_connection_header() -> None:
    assert b"connection" not in Response(200, b"body").head().lower()


def test_connection_constants_are_single_complete_header_lines() -> None:
    assert CONNECTION_CLOSE == b"Connection: close\r\n"
    assert CONNECTION_KEEP_ALIVE == b"Connection: keep-alive\r\n"


def test_render_head_is_what_every_response_class_renders() -> None:
    headers = (("ETag", '"abc"'),)
    nar = "application/x-nix-nar"
    expected = render_head(200, 7, nar, headers, CONNECTION_CLOSE)
    assert expected == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Type: application/x-nix-nar\r\n"
        b'ETag: "abc"\r\nConnection: close\r\n\r\n'
    )
    assert Response(200, b"1234567", nar, headers).head(CONNECTION_CLOSE) == expected
    assert FileResponse(3, 10, 7, nar, headers).head(CONNECTION_CLOSE) == expected
    assert StreamResponse(no_chunks(), 7, nar, headers).head(CONNECTION_CLOSE) == expected


def test_content_type_and_header_values_are_encoded_as_latin_1() -> None:
    head = Response(200, b"", "text/plain; x=\xe9", (("X-Name", "caf\xe9\xff"),)).head()
    assert b"Content-Type: text/plain; x=\xe9\r\n" in head
    assert b"X-Name: caf\xe9\xff\r\n" in head


# Heads are valid HTTP/1.1 to parsers we did not write


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_get_answer_parses_back_with_httptools(connection: bytes) -> None:
    response = Response(404, b"Not found\n", "text/plain", (("X-A", "1"), ("X-B", "2")))
    parsed = parse(*response.to_wire(connection, True))
    assert (parsed.status, parsed.version, parsed.reason) == (404, "1.1", b"Not Found")
    assert parsed.headers[:4] == [
        (b"Content-Length", b"10"),
        (b"Content-Type", b"text/plain"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
    ]
    assert parsed.body == b"Not found\n"
    assert parsed.message_complete
    assert parsed.keep_alive is (connection != CONNECTION_CLOSE)


def test_head_parses_back_with_http_client() -> None:
    head = Response(503, b"busy", "text/plain", (("Retry-After", "5"),)).head(CONNECTION_CLOSE)
    answer = http.client.HTTPResponse(_BytesSocket(head + b"busy"))  # type: ignore[arg-type]
    answer.begin()
    assert (answer.version, answer.status, answer.reason) == (11, 503, "Service Unavailable")
    assert answer.getheaders() == [
        ("Content-Length", "4"),
        ("Content-Type", "text/plain"),
        ("Retry-After", "5"),
        ("Connection", "close"),
    ]
    assert answer.read() == b"busy"


@pytest.mark.parametrize("status", SENDABLE_STATUSES)
def test_every_accepted_status_renders_a_status_line_httptools_reads_back(status: int) -> None:
    parsed = parse(Response(status, b"ab").head() + b"ab")
    assert parsed.status == status
    assert parsed.reason == HTTPStatus(status).phrase.encode()
    assert parsed.body == b"ab"
    assert parsed.message_complete


# Response.to_wire


def test_response_to_wire_for_get_is_head_then_body() -> None:
    response = Response(200, b"narinfo\n")
    assert response.to_wire(CONNECTION_KEEP_ALIVE, True) == (
        response.head(CONNECTION_KEEP_ALIVE),
        b"narinfo\n",
    )


def test_response_to_wire_for_head_is_the_head_alone_with_the_body_length() -> None:
    response = Response(200, b"narinfo\n")
    parts = response.to_wire(b"", False)
    assert parts == (response.head(),)
    assert b"Content-Length: 8\r\n" in parts[0]


def test_response_to_wire_with_empty_body_sends_no_empty_body_part() -> None:
    response = Response(404)
    assert response.to_wire(b"", True) == (response.head(),)


def test_response_content_length_is_the_body_length() -> None:
    assert Response(200, b"12345").content_length == 5
    assert Response(200).content_length == 0


# Pre-rendered responses


def test_prerender_is_the_head_then_the_body_with_the_head_length() -> None:
    response = Response(200, b"hot\n", "application/x-nix-narinfo", label="narinfo")
    raw = response.prerender()
    head = response.head()
    assert raw.data == head + b"hot\n"
    assert raw.head_length == len(head)
    assert (raw.status, raw.label, raw.content_length) == (200, "narinfo", 4)


def test_prerendered_head_request_sends_exactly_the_head() -> None:
    response = Response(200, b"hot narinfo\n", "text/plain", (("X-A", "1"),))
    raw = response.prerender()
    assert raw.to_wire(b"", False) == (response.head(),)
    assert raw.data[: raw.head_length] == response.head()
    assert raw.head() == response.head()


def test_prerendered_get_without_connection_sends_the_data_object_itself() -> None:
    raw = Response(200, b"hot\n").prerender()
    parts = raw.to_wire(b"", True)
    assert len(parts) == 1
    assert parts[0] is raw.data


@pytest.mark.parametrize("connection", [CONNECTION_CLOSE, CONNECTION_KEEP_ALIVE])
def test_prerendered_head_with_connection_equals_the_original_head_with_it(
    connection: bytes,
) -> None:
    response = Response(200, b"hot\n", "text/plain", (("X-A", "1"),))
    raw = response.prerender()
    assert raw.head(connection) == response.head(connection)
    assert raw.to_wire(connection, False) == (response.head(connection),)


@pytest.mark.parametrize("connection", [CONNECTION_CLOSE, CONNECTION_KEEP_ALIVE])
def test_prerendered_get_with_connection_is_new_head_then_body_view(connection: bytes) -> None:
    response = Response(200, b"hot\n")
    raw = response.prerender()
    head, body = raw.to_wire(connection, True)
    assert head == response.head(connection)
    assert isinstance(body, memoryview)
    assert bytes(body) == b"hot\n"


def test_prerendered_empty_body_get_with_connection_sends_only_the_head() -> None:
    raw = Response(404).prerender()
    assert raw.to_wire(CONNECTION_CLOSE, True) == (Response(404).head(CONNECTION_CLOSE),)


@pytest.mark.parametrize("connection", CONNECTIONS)
@pytest.mark.parametrize("with_body", [True, False])
def test_prerendered_wire_bytes_equal_the_original_responses(
    connection: bytes, with_body: bool
) -> None:
    response = Response(404, b"Not found\n", "text/plain", (("X-A", "1"),), label="narinfo")
    raw_parts = response.prerender().to_wire(connection, with_body)
    assert b"".join(bytes(p) for p in raw_parts) == b"".join(
        response.to_wire(connection, with_body)
    )


@pytest.mark.parametrize(
    ("data", "head_length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab", 0),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab", 36),  # inside the head
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab", 40),  # into the body
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 39),  # past the end
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 40),  # past the end
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 38),  # not HTTP/1.1
        (b"garbage\r\n\r\n", 11),
        (b"HTTP/1.1 200 OK\r\n\r\nab", -2),  # negative: its last 4 bytes end "the head"
    ],
)
def test_raw_response_refuses_a_head_length_that_does_not_end_its_head(
    data: bytes, head_length: int
) -> None:
    with pytest.raises(ValueError):
        RawResponse(data, head_length, 200)


def test_raw_response_accepts_the_head_length_of_a_well_formed_response() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"
    assert len(data) == 40
    raw = RawResponse(data, 38, 200)
    assert raw.content_length == 2
    assert raw.label == "other"


# Validation: statuses


@pytest.mark.parametrize("status", [0, 100, 101, 199, 204, 205, 304, 299, 600, 999, -200])
def test_status_that_cannot_carry_a_content_length_body_is_refused(status: int) -> None:
    with pytest.raises(ValueError, match="status"):
        Response(status)
    with pytest.raises(ValueError, match="status"):
        FileResponse(0, 0, 0, status=status)
    with pytest.raises(ValueError, match="status"):
        StreamResponse(no_chunks(), 0, status=status)


def test_all_sendable_statuses_are_accepted() -> None:
    assert len(SENDABLE_STATUSES) > 40
    for status in SENDABLE_STATUSES:
        assert Response(status).status == status


# Validation: header names, framing headers, values, content types


@pytest.mark.parametrize(
    "name",
    ["", "X Y", "X:Y", "X-A:", "X\r\nY", "X\n", "\rX", "X\x00", "Caf\xe9", "X(", "X@", "X/Y"],
)
def test_header_name_that_is_not_a_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="token"):
        Response(200, headers=((name, "v"),))


def test_header_name_with_every_token_character_is_accepted_and_rendered_as_is() -> None:
    head = Response(200, headers=((TCHARS, "v"),)).head()
    assert f"{TCHARS}: v\r\n".encode() in head
    assert header_values(parse(head), TCHARS.encode()) == [b"v"]


@pytest.mark.parametrize(
    "name",
    [
        "Content-Length",
        "content-length",
        "CONTENT-LENGTH",
        "Transfer-Encoding",
        "transfer-encoding",
        "Connection",
        "cOnNeCtIoN",
        "Content-Type",  # given as content_type: a second one would contradict it
        "content-type",
    ],
)
def test_framing_header_set_by_a_handler_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="set by the server"):
        Response(200, headers=((name, "close"),))
    with pytest.raises(ValueError, match="set by the server"):
        FileResponse(0, 0, 0, headers=((name, "close"),))
    with pytest.raises(ValueError, match="set by the server"):
        StreamResponse(no_chunks(), 0, headers=((name, "close"),))


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nSet-Cookie: x=1",
        "a\nb",
        "a\rb",
        "a\r\n\r\nHTTP/1.1 200 OK",
        "\x00",
        "\x1f",
        "\x7f",
        "\u0100",
        "\u20ac",
        "\U0001f600",
    ],
)
def test_header_value_with_a_line_break_control_or_non_latin_1_character_is_refused(
    value: str,
) -> None:
    with pytest.raises(ValueError, match="control or non-Latin-1"):
        Response(200, headers=(("X-A", value),))
    with pytest.raises(ValueError, match="control or non-Latin-1"):
        FileResponse(0, 0, 0, headers=(("X-A", value),))
    with pytest.raises(ValueError, match="control or non-Latin-1"):
        StreamResponse(no_chunks(), 0, headers=(("X-A", value),))


def test_a_bad_header_after_good_ones_is_still_refused() -> None:
    with pytest.raises(ValueError):
        Response(200, headers=(("X-A", "1"), ("X-B", "2"), ("X-C", "3\r\nX-D: 4")))


@pytest.mark.parametrize(
    "content_type", ["text/plain\r\nSet-Cookie: x=1", "text/plain\n", "a\x00", "\u20ac"]
)
def test_content_type_with_a_control_or_non_latin_1_character_is_refused(
    content_type: str,
) -> None:
    with pytest.raises(ValueError, match="content type"):
        Response(200, content_type=content_type)
    with pytest.raises(ValueError, match="content type"):
        FileResponse(0, 0, 0, content_type=content_type)
    with pytest.raises(ValueError, match="content type"):
        StreamResponse(no_chunks(), 0, content_type=content_type)


def test_horizontal_tab_and_obs_text_are_accepted_in_values() -> None:
    response = Response(200, b"", "text/plain;\tq=\xff", (("X-A", "a\tb\x80"),))
    parsed = parse(response.head())
    assert header_values(parsed, b"content-type") == [b"text/plain;\tq=\xff"]
    assert header_values(parsed, b"x-a") == [b"a\tb\x80"]


# Property: what the module accepts, a parser reads back unchanged

FORBIDDEN_IN_VALUE = {chr(c) for c in range(0x20) if c != 0x09} | {"\x7f"}
ACCEPTABLE_IN_VALUE = st.characters(
    codec="latin-1", exclude_characters="".join(sorted(FORBIDDEN_IN_VALUE))
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=20))
def test_header_value_is_accepted_exactly_when_latin_1_without_ctl_but_htab_nor_outer_space(
    value: str,
) -> None:
    acceptable = all(c not in FORBIDDEN_IN_VALUE and ord(c) <= 0xFF for c in value)
    acceptable = acceptable and value == value.strip(" \t")  # a parser would drop it
    if acceptable:
        assert Response(200, headers=(("X-A", value),)).headers == (("X-A", value),)
    else:
        with pytest.raises(ValueError):
            Response(200, headers=(("X-A", value),))


@settings(max_examples=300, deadline=None, database=None)
@given(
    name=st.text(alphabet=TCHARS, min_size=1, max_size=20),
    value=st.text(alphabet=ACCEPTABLE_IN_VALUE, max_size=40),
    connection=st.sampled_from(CONNECTIONS),
)
def test_accepted_header_value_is_read_back_unchanged_by_httptools(
    name: str, value: str, connection: bytes
) -> None:
    # A field value has no leading or trailing whitespace (RFC 9110 section 5.5): parsers strip
    # it, so the module refuses such values (tested above).
    assume(value == value.strip(" \t"))
    assume(
        name.lower() not in ("content-length", "transfer-encoding", "connection", "content-type")
    )
    response = Response(200, b"body", "text/plain", (("X-Before", "1"), (name, value)))
    parsed = parse(*response.to_wire(connection, True))
    assert parsed.headers[2:4] == [(b"X-Before", b"1"), (name.encode(), value.encode("latin-1"))]
    assert parsed.body == b"body"
    assert parsed.message_complete
    raw = response.prerender()
    assert parse(*raw.to_wire(connection, True)).headers == parsed.headers


@settings(max_examples=200, deadline=None, database=None)
@given(
    status=st.sampled_from(SENDABLE_STATUSES),
    body=st.binary(max_size=64),
    connection=st.sampled_from(CONNECTIONS),
)
def test_prerendered_head_request_stops_exactly_where_the_body_starts(
    status: int, body: bytes, connection: bytes
) -> None:
    response = Response(status, body)
    (head,) = response.prerender().to_wire(connection, False)
    parsed = parse(head)
    assert parsed.body == b""
    assert header_values(parsed, b"content-length") == [str(len(body)).encode()]
    assert bytes(head).endswith(b"\r\n\r\n")
    assert bytes(head).count(b"\r\n\r\n") == 1


# FileResponse


def test_file_response_defaults_and_content_length() -> None:
    response = FileResponse(5, 100, 42)
    assert (response.fd, response.offset, response.length) == (5, 100, 42)
    assert (response.content_type, response.headers, response.label, response.status) == (
        "application/octet-stream",
        (),
        "file",
        200,
    )
    assert response.content_length == 42
    assert response.head() == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Type: application/octet-stream\r\n\r\n"
    )


@pytest.mark.parametrize(("offset", "length"), [(-1, 0), (0, -1), (-5, -5)])
def test_file_response_refuses_a_negative_offset_or_length(offset: int, length: int) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        FileResponse(0, offset, length)


def test_file_response_from_path_answers_the_whole_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "nar"
    path.write_bytes(b"0123456789")
    response = FileResponse.from_path(path, "application/x-nix-nar", (("X-A", "1"),), "nar")
    try:
        assert (response.offset, response.length, response.content_length) == (0, 10, 10)
        assert (response.content_type, response.headers, response.label) == (
            "application/x-nix-nar",
            (("X-A", "1"),),
            "nar",
        )
        assert os.pread(response.fd, 100, 0) == b"0123456789"
        assert b"Content-Length: 10\r\n" in response.head()
    finally:
        response.close()


def test_file_response_close_closes_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "nar"
    path.write_bytes(b"x")
    response = FileResponse.from_path(path)
    response.close()
    with pytest.raises(OSError):
        os.fstat(response.fd)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_file_response_from_path_refuses_a_directory_without_leaking_its_descriptor(
    tmp_path: Path,
) -> None:
    before = open_fds()
    with pytest.raises(IsADirectoryError):
        FileResponse.from_path(tmp_path)
    assert open_fds() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_file_response_from_path_with_bad_headers_closes_what_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "nar"
    path.write_bytes(b"x")
    before = open_fds()
    with pytest.raises(ValueError):
        FileResponse.from_path(path, headers=(("Content-Length", "1"),))
    assert open_fds() == before


def test_file_response_from_path_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileResponse.from_path(tmp_path / "absent")


# StreamResponse


def test_stream_response_keeps_its_iterator_and_declared_length() -> None:
    chunks = no_chunks()
    response = StreamResponse(chunks, 1234)
    assert response.chunks is chunks
    assert (response.content_length, response.content_type, response.label, response.status) == (
        1234,
        "application/octet-stream",
        "stream",
        200,
    )
    assert response.head() == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: application/octet-stream\r\n\r\n"
    )


def test_stream_response_refuses_a_negative_content_length() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        StreamResponse(no_chunks(), -1)


def test_stream_response_of_zero_bytes_is_allowed() -> None:
    assert b"Content-Length: 0\r\n" in StreamResponse(no_chunks(), 0).head()


# Responses are values


@pytest.mark.parametrize(
    "response",
    [
        Response(200, b"x"),
        Response(200, b"x").prerender(),
        FileResponse(0, 0, 1),
        StreamResponse(no_chunks(), 1),
    ],
    ids=["Response", "RawResponse", "FileResponse", "StreamResponse"],
)
def test_responses_are_frozen_so_a_validated_head_cannot_be_changed(response: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        response.status = 999  # type: ignore[attr-defined]
