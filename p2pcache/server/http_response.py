"""What the Guix endpoint's handler answers with, and how each answer becomes bytes.

There are four kinds of response because the endpoint has four kinds of answers:

- `Response`: a small body in memory (a narinfo rendered on the fly, a 404).
- `RawResponse`: a complete response rendered once and cached by the handler (hot narinfos, a
  shared 404). The server writes its bytes as they are. It carries the length of its head so
  that the server can cut the body off for HEAD and splice a `Connection` header in when the
  request needs one; the handler never has to know how the request was framed.
- `FileResponse`: a byte range of an open file (a cached NAR), sent with sendfile.
- `StreamResponse`: bytes produced while they are sent (a NAR arriving from peers), with the
  length declared up front.

Every response carries Content-Length, errors included: Guix reads pipelined answers back by
it (spec section 1.2), and a missing one makes it reconnect after every answer. So the framing
headers (Content-Length, Connection, Transfer-Encoding) belong to this module and the server; a
handler that puts one in its extra headers gets a ValueError, as it does for a header name
that is not a token or a value with a line break in it (header injection).

Statuses are restricted to final statuses that may carry a body (200-599 without 204, 205 and
304), since every response here has a Content-Length and a body of that length.

No Date header (2026-11-25): RFC 9110 section 6.6.1 asks origin servers with a clock for one,
but the only client is Guix, which ignores it, and a response pre-rendered once could not
carry a current one.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import AsyncIterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import NamedTuple

Headers = tuple[tuple[str, str], ...]

CONNECTION_CLOSE = b"Connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"

_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii")
    for s in HTTPStatus
    if s.value >= 200 and s.value not in (204, 205, 304)
}
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_SET_BY_THIS_MODULE = _FRAMING_HEADERS | {"content-type"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 section 5.6.2
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")  # CTLs but HTAB


def _check_head_fields(status: int, content_type: str, headers: Headers) -> None:
    """Refuse what would break framing or inject lines (the caller is a handler: a bug)."""
    if status not in _STATUS_LINES:
        raise ValueError(f"status {status} cannot be sent with a Content-Length body")
    if _FORBIDDEN_IN_VALUE.search(content_type):
        raise ValueError(f"content type {content_type!r} contains a control character")
    for name, value in headers:
        if not _TOKEN.match(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if name.lower() in _SET_BY_THIS_MODULE:
            raise ValueError(f"header {name!r} is set by the server, not by the handler")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(f"header {name!r} has a control or non-Latin-1 character")
        if value != value.strip(" \t"):
            # A parser drops it (RFC 9110 section 5.5): the client would read another value.
            raise ValueError(f"header {name!r} has leading or trailing whitespace")


def render_head(
    status: int,
    content_length: int,
    content_type: str,
    headers: Headers = (),
    connection: bytes = b"",
) -> bytes:
    """Render a response head ending in the blank line.

    Requires the fields to have passed `_check_head_fields` (the response classes do that
    when they are built). `connection` is empty, `CONNECTION_CLOSE` or `CONNECTION_KEEP_ALIVE`.
    """
    parts = [
        _STATUS_LINES[status],
        b"Content-Length: %d\r\nContent-Type: " % content_length,
        content_type.encode("latin-1"),
        b"\r\n",
    ]
    for name, value in headers:
        parts += (name.encode("ascii"), b": ", value.encode("latin-1"), b"\r\n")
    parts += (connection, b"\r\n")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Response:
    """A response whose body is in memory. `label` names the endpoint for metrics."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Headers = ()
    label: str = "other"

    def __post_init__(self) -> None:
        _check_head_fields(self.status, self.content_type, self.headers)

    @property
    def content_length(self) -> int:
        return len(self.body)

    def head(self, connection: bytes = b"") -> bytes:
        return render_head(self.status, len(self.body), self.content_type, self.headers, connection)

    def to_wire(self, connection: bytes, with_body: bool) -> tuple[bytes, ...]:
        """The bytes to write: the head with `connection` spliced in, and the body if asked."""
        head = self.head(connection)
        return (head, self.body) if with_body and self.body else (head,)

    def prerender(self) -> RawResponse:
        """Render once, for a handler that answers the same bytes many times."""
        head = self.head()
        return RawResponse(head + self.body, len(head), self.status, self.label)


class FastReply(NamedTuple):
    """A whole GET response as one buffer, for the server's fast path only.

    A RawResponse validates its head and sets frozen fields one by one; on a narinfo read
    from the index for one answer only (a million items, random keys) that was about 4 us of
    a ~35 us request (py-spy, 2026-11-25). The fast path writes `data` as it is, so no head
    length is needed: it never answers HEAD or splices a Connection header.
    """

    data: bytes
    status: int
    label: str


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A complete response as bytes: `data[:head_length]` is the head, the rest the body.

    Build it with `Response.prerender()`. The head must not contain a Connection header: the
    server adds one when the request needs it.
    """

    data: bytes
    head_length: int
    status: int
    label: str = "other"

    def __post_init__(self) -> None:
        n = self.head_length
        if not (
            4 <= n <= len(self.data)
            and self.data.startswith(b"HTTP/1.1 ")
            and self.data[n - 4 : n] == b"\r\n\r\n"
        ):
            raise ValueError("RawResponse.head_length does not end the head of its data")

    @property
    def content_length(self) -> int:
        return len(self.data) - self.head_length

    def head(self, connection: bytes = b"") -> bytes:
        """The head, with `connection` (a full header line) spliced in before the blank line."""
        n = self.head_length
        if not connection:
            return self.data[:n]
        return b"".join((self.data[: n - 2], connection, b"\r\n"))

    def to_wire(self, connection: bytes, with_body: bool) -> tuple[bytes | memoryview, ...]:
        """The bytes to write; `data` itself when there is nothing to change."""
        n = self.head_length
        if not connection:
            return (self.data,) if with_body else (self.data[:n],)
        if with_body and len(self.data) > n:
            return (self.head(connection), memoryview(self.data)[n:])
        return (self.head(connection),)


@dataclass(frozen=True, slots=True)
class FileResponse:
    """`length` bytes of the open file `fd` from `offset`, sent with sendfile.

    The server owns `fd` from the moment the handler returns this: it closes it once the range
    is sent, or when the response is dropped (HEAD, connection lost, server stopping). If the
    file turns out shorter than `offset + length`, the connection is aborted so that the client
    sees a truncated body rather than one that looks complete.
    """

    fd: int
    offset: int
    length: int
    content_type: str = "application/octet-stream"
    headers: Headers = ()
    label: str = "file"
    status: int = 200

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError("FileResponse needs a non-negative offset and length")
        _check_head_fields(self.status, self.content_type, self.headers)

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        content_type: str = "application/octet-stream",
        headers: Headers = (),
        label: str = "file",
    ) -> FileResponse:
        """Open a regular file and answer all of it. Raises OSError (e.g. FileNotFoundError)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(f"{os.fspath(path)} is not a regular file")
            return cls(fd, 0, info.st_size, content_type, headers, label)
        except BaseException:
            os.close(fd)
            raise

    @property
    def content_length(self) -> int:
        return self.length

    def head(self, connection: bytes = b"") -> bytes:
        return render_head(self.status, self.length, self.content_type, self.headers, connection)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A body produced while it is sent: `chunks` must yield exactly `content_length` bytes.

    If the iterator raises, or yields more or fewer bytes than declared, the server aborts the
    connection at once, so the client sees a truncated body and never one that looks complete
    (Guix then retries or fails the substitution; it never registers a short NAR).
    """

    chunks: AsyncIterable[bytes]
    content_length: int
    content_type: str = "application/octet-stream"
    headers: Headers = ()
    label: str = "stream"
    status: int = 200

    def __post_init__(self) -> None:
        if self.content_length < 0:
            raise ValueError("StreamResponse needs a non-negative content_length")
        _check_head_fields(self.status, self.content_type, self.headers)

    def head(self, connection: bytes = b"") -> bytes:
        return render_head(
            self.status, self.content_length, self.content_type, self.headers, connection
        )


AnyResponse = Response | RawResponse | FileResponse | StreamResponse
