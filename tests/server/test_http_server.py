"""The HTTP server behaves as `guix substitute` needs: pipelined answers in order, framed by
Content-Length, keep-alive, HEAD, files by sendfile, streams that never look complete when they
are not, handler failures as 500s, and an explicit start/stop life cycle."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from p2pcache.server import http_server
from p2pcache.server.http_response import (
    FileResponse,
    RawResponse,
    Response,
    StreamResponse,
    render_head,
)
from p2pcache.server.http_server import (
    _WRITE_TOGETHER,
    MISSES_PER_TURN,
    Request,
    ServerLimits,
    _new_request,
    decode_target,
)
from tests.server import (
    RawClient,
    both_loops,
    eventually,
    request,
    serving,
    uvloop_only,
)

HOT = Response(200, b"hot narinfo\n", "application/x-nix-narinfo", label="narinfo").prerender()
NOT_FOUND = Response(404, b"Not found\n", label="narinfo").prerender()


def echo_path(req: Request) -> Response:
    return Response(200, req.path.encode(), label="echo")


async def stream_of(*chunks: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, chunk in enumerate(chunks):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("peer went away")
        await asyncio.sleep(0)
        yield chunk


# Pipelining


async def pipelined_batch_answered_in_order(handle: object, count: int) -> None:
    """Write `count` narinfo requests at once, as Guix does, and read every answer back in
    request order, each the path it asked for."""
    async with serving(handle) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        await client.send(b"".join(request(f"/{i}.narinfo") for i in range(count)))
        for i in range(count):
            answer = await client.read_answer()
            assert (answer.status, answer.body) == (200, f"/{i}.narinfo".encode())
        await client.close()


@both_loops
async def test_1000_pipelined_gets_are_answered_in_request_order() -> None:
    """Some answers are ready at once, others after random delays, so they complete out of
    order; the client still reads them back in request order, as Guix does."""
    rng = random.Random(1000)
    delays = [rng.choice([None, 0.0, rng.uniform(0, 0.05)]) for _ in range(1000)]
    completed: list[int] = []

    async def later(req: Request, n: int, delay: float) -> Response:
        await asyncio.sleep(delay)
        completed.append(n)
        return Response(200, req.path.encode(), label="slow")

    def handle(req: Request) -> object:
        n = int(req.path.strip("/").split(".")[0])
        if delays[n] is None:
            completed.append(n)
            return Response(200, req.path.encode())
        return later(req, n, delays[n])

    await pipelined_batch_answered_in_order(handle, 1000)
    assert completed != sorted(completed)  # the answers really were ready out of order


@both_loops
async def test_answers_finished_in_one_turn_go_out_in_one_write(monkeypatch) -> None:
    """A group commit finishes a few hundred misses of a batch at once: their answers are
    written together at the end of the turn, not one write each."""
    writes: list[int] = []
    real_write = http_server._Connection._write

    def counting_write(self, out):
        if out:
            writes.append(len(out))
        real_write(self, out)

    monkeypatch.setattr(http_server._Connection, "_write", counting_write)
    done = asyncio.Event()

    async def miss(req: Request) -> Response:
        await done.wait()
        return Response(200, req.path.encode(), label="miss")

    async with serving(miss) as server:
        client = await RawClient.connect(server)
        await client.send(b"".join(request(f"/{i}.narinfo") for i in range(100)))
        await eventually(lambda: len(server._connections) == 1)
        await asyncio.sleep(0.05)  # every miss started and waiting
        done.set()
        for i in range(100):
            answer = await client.read_answer()
            assert (answer.status, answer.body) == (200, f"/{i}.narinfo".encode())
        await client.close()
    assert sum(writes) == 200  # head and body of each
    assert len(writes) <= 2


@both_loops
async def test_a_pipelined_batch_of_misses_is_started_a_bounded_number_per_turn() -> None:
    """1000 pipelined misses are started MISSES_PER_TURN per turn of the loop, so the first
    ones get going (a peer asked) before the last is even started; answers stay in order."""
    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:
        nonlocal turn
        turn += 1
        if not stopped:
            loop.call_soon(tick)

    stopped = False
    started_in: list[int] = []
    first_step_in: list[int] = []

    async def miss(req: Request) -> Response:
        first_step_in.append(turn)
        await asyncio.sleep(0.01)
        return Response(200, req.path.encode(), label="miss")

    def handle(req: Request) -> object:
        started_in.append(turn)
        return miss(req)

    loop.call_soon(tick)
    try:
        await pipelined_batch_answered_in_order(handle, 1000)
    finally:
        stopped = True
    per_turn = {t: started_in.count(t) for t in set(started_in)}
    assert len(started_in) == 1000 and max(per_turn.values()) <= MISSES_PER_TURN
    assert len(per_turn) >= 1000 // MISSES_PER_TURN
    assert first_step_in[0] < started_in[-1]  # the first miss ran before the last started


@both_loops
async def test_misses_held_for_later_turns_are_answered_after_the_client_half_closes() -> None:
    """A client that writes its batch and shuts its side still gets every answer, those of
    the misses waiting for a later turn included."""

    async def miss(req: Request) -> Response:
        await asyncio.sleep(0.01)
        return Response(200, req.path.encode(), label="miss")

    async with serving(miss) as server:
        client = await RawClient.connect(server)
        await client.send(b"".join(request(f"/{i}.narinfo") for i in range(300)))
        client.writer.write_eof()
        for i in range(300):
            answer = await client.read_answer()
            assert (answer.status, answer.body) == (200, f"/{i}.narinfo".encode())
        assert await client.reader.read() == b""  # then the server closes
        await client.close()


@both_loops
async def test_pipelined_slow_answers_are_computed_concurrently() -> None:
    """100 misses of 0.3 s each on one connection take about 0.3 s, not 30 s."""

    async def miss(req: Request) -> RawResponse:
        await asyncio.sleep(0.3)
        return NOT_FOUND

    async with serving(miss) as server:
        client = await RawClient.connect(server)
        started = asyncio.get_running_loop().time()
        await client.send(b"".join(request(f"/{i}.narinfo") for i in range(100)))
        for _ in range(100):
            assert (await client.read_answer()).status == 404
        assert asyncio.get_running_loop().time() - started < 3.0
        await client.close()


@uvloop_only
async def test_answers_after_a_slow_one_wait_for_it() -> None:
    gate = asyncio.Event()

    async def blocked(req: Request) -> Response:
        await gate.wait()
        return Response(200, b"first")

    def handle(req: Request) -> object:
        return blocked(req) if req.path == "/first" else HOT

    async with serving(handle) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        await client.send(request("/first") + request("/second") + request("/third"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.reader.read(1), 0.2)  # nothing overtakes /first
        gate.set()
        assert (await client.read_answer()).body == b"first"
        assert (await client.read_answer()).body == HOT.data[HOT.head_length :]
        assert (await client.read_answer()).body == HOT.data[HOT.head_length :]
        await client.close()


# Framing: Content-Length everywhere, HEAD without a body


@both_loops
async def test_every_kind_of_response_carries_content_length(tmp_path: Path) -> None:
    (tmp_path / "nar").write_bytes(b"n" * 1234)

    def handle(req: Request) -> object:
        return {
            "/raw": lambda: HOT,
            "/missing": lambda: NOT_FOUND,
            "/memory": lambda: Response(201, b"made", label="m"),
            "/empty": lambda: Response(200),
            "/file": lambda: FileResponse.from_path(tmp_path / "nar"),
            "/stream": lambda: StreamResponse(stream_of(b"ab", b"", b"cd"), 4),
        }[req.path]()

    async with serving(handle) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        for path, status, body in [
            ("/raw", 200, b"hot narinfo\n"),
            ("/missing", 404, b"Not found\n"),
            ("/memory", 201, b"made"),
            ("/empty", 200, b""),
            ("/file", 200, b"n" * 1234),
            ("/stream", 200, b"abcd"),
        ]:
            answer = await client.get(path)
            assert (answer.status, answer.body) == (status, body), path
            assert answer.content_length == len(body)
        await client.close()


@both_loops
async def test_head_has_the_get_headers_and_no_body(tmp_path: Path) -> None:
    """Each HEAD is followed on the same connection by a GET: if the server sent a body for
    HEAD, the GET's answer would be read from the middle of it."""
    (tmp_path / "nar").write_bytes(b"n" * 5000)

    def handle(req: Request) -> object:
        return {
            "/raw": lambda: HOT,
            "/memory": lambda: Response(
                200, b"in memory", headers=(("Cache-Control", "max-age=60"),)
            ),
            "/file": lambda: FileResponse.from_path(tmp_path / "nar"),
            "/stream": lambda: StreamResponse(stream_of(b"x" * 10), 10),
        }[req.path]()

    async with serving(handle) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        for path in ("/raw", "/memory", "/file", "/stream"):
            await client.send(request(path, method="HEAD") + request(path))
            head = await client.read_answer(head_only=True)
            get = await client.read_answer()
            assert head.status == get.status == 200
            assert head.headers == get.headers, path
            assert head.content_length == len(get.body) > 0
        await client.close()


@uvloop_only
async def test_head_on_a_file_closes_the_file_unsent(tmp_path: Path) -> None:
    nar = tmp_path / "nar"
    nar.write_bytes(b"n" * 100)
    opened: list[int] = []

    def handle(req: Request) -> FileResponse:
        response = FileResponse.from_path(nar)
        opened.append(response.fd)
        return response

    async with serving(handle) as server:
        client = await RawClient.connect(server)
        assert (await client.get("/nar", method="HEAD")).content_length == 100
        assert not _fd_points_to(opened[0], nar)
        await client.close()


def _fd_points_to(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except FileNotFoundError:
        return False


# Keep-alive and closing


@both_loops
async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serving(echo_path) as server:
        client = await RawClient.connect(server)
        for i in range(50):
            answer = await client.get(f"/{i}")
            assert answer.body == f"/{i}".encode()
            assert "connection" not in answer.headers
        assert server.connection_count == 1
        await client.close()


@both_loops
async def test_connection_close_is_answered_then_the_connection_closes() -> None:
    async with serving(lambda req: HOT) as server:
        client = await RawClient.connect(server)
        closing = request("/a", headers=(("Host", "x"), ("Connection", "close")))
        await client.send(request("/first") + closing + request("/never-answered"))
        assert "connection" not in (await client.read_answer()).headers
        last = await client.read_answer()
        assert last.headers["connection"] == "close"
        assert await client.read_to_eof() == b""
        await client.close()


@uvloop_only
async def test_http_1_0_closes_unless_keep_alive() -> None:
    async with serving(lambda req: HOT) as server:
        client = await RawClient.connect(server)
        answer = await client.get("/", version="1.0", headers=())
        assert answer.headers["connection"] == "close"
        assert await client.read_to_eof() == b""
        await client.close()

        client = await RawClient.connect(server)
        for _ in range(3):
            answer = await client.get("/", version="1.0", headers=(("Connection", "keep-alive"),))
            assert answer.headers["connection"] == "keep-alive"
            assert answer.body == b"hot narinfo\n"
        await client.close()


@uvloop_only
async def test_a_close_after_unread_pipelined_requests_still_delivers_the_answer() -> None:
    """The client's unread requests must not make the kernel reset the connection before the
    last answer is read (the server sends FIN and drains instead of closing at once)."""
    body = os.urandom(256 * 1024)
    async with serving(lambda req: Response(200, body)) as server:
        client = await RawClient.connect(server)
        closing = request("/a", headers=(("Connection", "close"),))
        await client.send(closing + request("/b") * 2000)
        await asyncio.sleep(0.1)  # let the server answer and close while requests are unread
        answer = await client.read_answer()
        assert answer.body == body
        assert await client.read_to_eof() == b""
        await client.close()


@both_loops
async def test_answers_of_many_connections_read_at_once_all_arrive_then_the_close() -> None:
    """Fast-path answers of the connections read in one loop iteration are written together,
    in groups; each client here pipelines its requests and half-closes before the server
    runs again, and still gets every answer, in order, and then the close."""

    def fast(target: bytes) -> RawResponse | None:
        return HOT if target.startswith(b"/hot/") else None

    async with serving(echo_path, fast_answer=fast) as server:
        clients = [await RawClient.connect(server) for _ in range(3 * _WRITE_TOGETHER + 1)]
        for n, client in enumerate(clients):
            client.writer.write(request(f"/hot/{n}") * 3 + request(f"/echo/{n}"))
            client.writer.write_eof()
        for n, client in enumerate(clients):
            for _ in range(3):
                assert (await client.read_answer()).body == HOT.data[HOT.head_length :]
            assert (await client.read_answer()).body == f"/echo/{n}".encode()
            assert await client.read_to_eof() == b""
            await client.close()


@both_loops
async def test_an_end_of_input_read_with_the_requests_still_gets_their_answers() -> None:
    """A loop may hand the server a read and the end of input before the answers of that read
    are written (they wait for the other connections read meanwhile): they must still go out
    before the close. Driven on the real connection, in the order such a loop calls it."""
    async with serving(echo_path, fast_answer=lambda target: HOT) as server:
        client = await RawClient.connect(server)
        await eventually(lambda: len(server._connections) == 1)
        (conn,) = server._connections
        conn.data_received(request("/a") * 2)
        assert conn.eof_received() is True  # keep the transport: answers are pending
        for _ in range(2):
            assert (await client.read_answer()).body == HOT.data[HOT.head_length :]
        assert await client.read_to_eof() == b""
        await client.close()


@both_loops
async def test_200_concurrent_clients_each_doing_several_requests() -> None:
    async def later(req: Request) -> Response:
        await asyncio.sleep(0.001)
        return Response(200, req.path.encode())

    def handle(req: Request) -> object:
        return later(req) if req.path.endswith("1") else echo_path(req)

    async def one_client(n: int) -> None:
        client = await RawClient.connect(server)
        for i in range(5):
            assert (await client.get(f"/{n}/{i}")).body == f"/{n}/{i}".encode()
        await client.close()

    async with serving(handle) as server:  # type: ignore[arg-type]
        await asyncio.gather(*(one_client(n) for n in range(200)))


@uvloop_only
async def test_aiohttp_client_reuses_the_connection() -> None:
    """An ordinary HTTP client agrees with the server's framing and keep-alive."""
    async with serving(echo_path) as server:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(10):
                url = f"http://127.0.0.1:{server.port}/x{i}?q=1"
                async with session.get(url) as resp:
                    assert resp.status == 200
                    assert await resp.read() == f"/x{i}".encode()
                async with session.head(url) as resp:
                    assert resp.headers["Content-Length"] == str(len(f"/x{i}"))
            assert server.connection_count == 1


# Requests as the handler sees them


@uvloop_only
async def test_the_handler_sees_method_target_decoded_path_and_headers() -> None:
    seen: list[Request] = []

    def handle(req: Request) -> RawResponse:
        seen.append(req)
        return HOT

    async with serving(handle) as server:
        client = await RawClient.connect(server)
        await client.get("/nar/zstd/a%20b%C3%A9?x=%2F")
        await client.get("http://example.org/abs/path?q", method="HEAD")
        await client.get("/up/../../etc/passwd")
        await client.close()
    first, second, third = seen
    assert (first.method, first.target, first.path) == (
        "GET",
        b"/nar/zstd/a%20b%C3%A9?x=%2F",
        "/nar/zstd/a bé",
    )
    assert first.keep_alive
    assert first.header(b"user-agent") == b"GNU Guile"
    assert first.headers == ((b"host", b"localhost"), (b"user-agent", b"GNU Guile"))
    assert (second.method, second.path) == ("HEAD", "/abs/path")
    # Traversal is the handler's to refuse: the server passes the segments on as they are.
    assert third.path == "/up/../../etc/passwd"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/", "/"),
        (b"/abc.narinfo", "/abc.narinfo"),
        (b"/a?b#c", "/a"),
        (b"/%41%62%63", "/Abc"),
        (b"/caf%C3%A9", "/café"),
        (b"/a%20b/%25", "/a b/%"),
        (b"http://host:8080/x/y?z", "/x/y"),
        (b"HTTPS://host", "/"),
        (b"http://host?q", "/"),
    ],
)
def test_decode_target_accepts(target: bytes, path: str) -> None:
    assert decode_target(target) == path


# Files, by sendfile


@both_loops
async def test_a_large_file_arrives_intact(tmp_path: Path) -> None:
    data = os.urandom(24 * 1024 * 1024 + 7)
    (tmp_path / "big").write_bytes(data)

    async with serving(lambda req: FileResponse.from_path(tmp_path / "big")) as server:
        client = await RawClient.connect(server)
        for _ in range(2):  # the connection stays usable after a file
            answer = await client.get("/big")
            assert answer.content_length == len(data)
            assert hashlib.sha256(answer.body).digest() == hashlib.sha256(data).digest()
        await client.close()


@uvloop_only
async def test_a_file_range_sends_only_that_range(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)

    def handle(req: Request) -> FileResponse:
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        return FileResponse(fd, 1000, 50_000, "application/zstd", label="nar")

    async with serving(handle) as server:
        client = await RawClient.connect(server)
        await client.send(request("/a") + request("/b"))  # two files pipelined
        for _ in range(2):
            answer = await client.read_answer()
            assert answer.headers["content-type"] == "application/zstd"
            assert answer.body == data[1000:51000]
        await client.close()


@both_loops
async def test_2000_pipelined_small_files_are_all_sent(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")

    async with serving(lambda req: FileResponse.from_path(tmp_path / "f")) as server:
        client = await RawClient.connect(server)
        await client.send(request("/f") * 2000)
        for _ in range(2000):
            assert (await client.read_answer()).body == b"0123456789"
        await client.close()


@uvloop_only
async def test_a_file_shorter_than_declared_never_looks_complete(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)

    def handle(req: Request) -> FileResponse:
        return FileResponse(os.open(tmp_path / "f", os.O_RDONLY), 0, 5000)

    async with serving(handle) as server:
        client = await RawClient.connect(server)
        await client.send(request("/f"))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await client.read_answer()
        await client.close()


# Streams


@both_loops
async def test_a_stream_is_sent_chunk_by_chunk() -> None:
    chunks = [os.urandom(n) for n in (1, 70_000, 0, 3, 200_000)]
    total = sum(map(len, chunks))

    async with serving(lambda req: StreamResponse(stream_of(*chunks), total)) as server:
        client = await RawClient.connect(server)
        await client.send(request("/s") + request("/s"))
        for _ in range(2):
            assert (await client.read_answer()).body == b"".join(chunks)
        await client.close()


@both_loops
async def test_a_stream_failing_midway_cuts_the_connection() -> None:
    def handle(req: Request) -> StreamResponse:
        return StreamResponse(stream_of(b"a" * 1000, b"b" * 1000, fail_after=1), 2000)

    async with serving(handle) as server:
        client = await RawClient.connect(server)
        await client.send(request("/s"))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await client.read_answer()
        await client.close()


@pytest.mark.parametrize("declared", [999, 1001])
@uvloop_only
async def test_a_stream_of_the_wrong_length_cuts_the_connection(declared: int) -> None:
    """Too long: cut before the excess is sent; too short: cut before the client could take
    the next response for the missing bytes."""
    async with serving(lambda req: StreamResponse(stream_of(b"x" * 1000), declared)) as server:
        client = await RawClient.connect(server)
        await client.send(request("/s") + request("/next"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d" % declared in head
        try:
            received = await client.read_to_eof()
        except ConnectionResetError:
            received = b""
        assert len(received) < declared  # and no second answer after it
        await client.close()


# Handler failures


@both_loops
async def test_a_handler_exception_is_a_500_and_the_connection_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_later(req: Request) -> Response:
        await asyncio.sleep(0)
        raise KeyError("secret detail")

    def handle(req: Request) -> object:
        if req.path == "/sync":
            raise ValueError("secret detail")
        if req.path == "/async":
            return fails_later(req)
        if req.path == "/nonsense":
            return "not a response"
        return HOT

    with caplog.at_level(logging.ERROR, logger="p2pcache.server.http_server"):
        async with serving(handle) as server:  # type: ignore[arg-type]
            client = await RawClient.connect(server)
            for path in ("/sync", "/async", "/nonsense"):
                answer = await client.get(path)
                assert answer.status == 500
                assert b"secret" not in answer.body
                assert (await client.get("/ok")).status == 200
            await client.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert errors[0].exc_info is not None and errors[1].exc_info is not None


# Observer


@uvloop_only
async def test_the_observer_sees_each_finished_response(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f" * 10)
    seen: list[tuple[str, int, float, int]] = []

    def handle(req: Request) -> object:
        if req.path == "/file":
            return FileResponse.from_path(tmp_path / "f", label="nar")
        return HOT if req.path == "/hot" else NOT_FOUND

    async with serving(handle, observer=lambda *args: seen.append(args)) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        await client.get("/hot")
        await client.get("/missing")
        await client.get("/file")
        await client.get("/hot", method="HEAD")
        await client.send(b"DELETE / HTTP/1.1\r\n\r\n")
        await client.read_answer()
        await client.close()
    labels = [(label, status) for label, status, _, _ in seen]
    assert labels == [
        ("narinfo", 200),
        ("narinfo", 404),
        ("nar", 200),
        ("narinfo", 200),
        ("refused", 405),
    ]
    assert seen[0][3] == len(HOT.data)
    assert seen[2][3] > 10
    assert seen[3][3] == HOT.head_length
    assert all(0 <= seconds < 5 for _, _, seconds, _ in seen)


@both_loops
async def test_a_fast_answer_serves_plain_gets_and_leaves_the_rest_to_the_handler() -> None:
    """The FastAnswer sees only plain GETs by raw target; HEAD, escaped targets, a Connection
    header and requests pipelined behind a slow answer reach the handler, and every response
    is observed once, in order."""
    offered: list[bytes] = []
    handled: list[tuple[str, str]] = []
    seen: list[tuple[str, int, int]] = []

    def fast(target: bytes) -> RawResponse | None:
        offered.append(target)
        return HOT if target == b"/hot" else None

    async def slow() -> RawResponse:
        await asyncio.sleep(0.05)
        return NOT_FOUND

    def handle(req: Request) -> object:
        handled.append((req.method, req.path))
        if req.path == "/slow":
            return slow()
        return HOT if req.path == "/hot" else NOT_FOUND

    def observe(label: str, status: int, seconds: float, nbytes: int) -> None:
        seen.append((label, status, nbytes))

    async with serving(handle, observer=observe, fast_answer=fast) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        assert (await client.get("/hot")).body == b"hot narinfo\n"
        assert (await client.get("/missing")).status == 404
        head = await client.get("/hot", method="HEAD")
        assert (head.status, head.body, head.content_length) == (200, b"", len(b"hot narinfo\n"))
        assert (await client.get("/h%6Ft")).body == b"hot narinfo\n"
        await client.send(request("/slow") + request("/hot"))
        assert (await client.read_answer()).status == 404
        assert (await client.read_answer()).body == b"hot narinfo\n"
        answer = await client.get("/hot", headers=(("Connection", "keep-alive"),))
        assert answer.body == b"hot narinfo\n"
        await client.close()
    assert offered == [b"/hot", b"/missing", b"/slow"]
    assert handled == [
        ("GET", "/missing"),
        ("HEAD", "/hot"),
        ("GET", "/hot"),
        ("GET", "/slow"),
        ("GET", "/hot"),
        ("GET", "/hot"),
    ]
    assert seen == [
        ("narinfo", 200, len(HOT.data)),
        ("narinfo", 404, len(NOT_FOUND.data)),
        ("narinfo", 200, HOT.head_length),
        ("narinfo", 200, len(HOT.data)),
        ("narinfo", 404, len(NOT_FOUND.data)),
        ("narinfo", 200, len(HOT.data)),
        ("narinfo", 200, len(HOT.data) + len(b"Connection: keep-alive\r\n")),
    ]


@uvloop_only
async def test_a_failing_fast_answer_leaves_the_request_to_the_handler(caplog) -> None:
    def fast(target: bytes) -> RawResponse | None:
        raise RuntimeError("index gone")

    async with serving(lambda req: HOT, fast_answer=fast) as server:
        client = await RawClient.connect(server)
        assert (await client.get("/hot")).body == b"hot narinfo\n"
        await client.close()
    assert "the fast answer failed" in caplog.text


# Life cycle


@both_loops
async def test_stop_finishes_in_flight_answers_and_stops_listening() -> None:
    called, release = asyncio.Event(), asyncio.Event()

    async def slow(req: Request) -> Response:
        called.set()
        await release.wait()
        return Response(200, b"late but complete")

    server_cm = serving(slow)
    server = await server_cm.__aenter__()
    port = server.port
    busy = await RawClient.connect(server)
    idle = await RawClient.connect(server)
    await busy.send(request("/slow"))
    await called.wait()
    await eventually(lambda: server.connection_count == 2)
    stopping = asyncio.create_task(server.stop(grace=5.0))
    assert await idle.read_to_eof() == b""  # idle connections are closed at once
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    release.set()
    assert (await busy.read_answer()).body == b"late but complete"
    assert await busy.read_to_eof() == b""
    await stopping
    await busy.close()
    await idle.close()
    await server_cm.__aexit__(None, None, None)


@uvloop_only
async def test_stop_aborts_what_is_still_busy_after_the_grace_period() -> None:
    called = asyncio.Event()

    async def never(req: Request) -> Response:
        called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with serving(never) as server:
        client = await RawClient.connect(server)
        await client.send(request("/never"))
        await called.wait()
        started = asyncio.get_running_loop().time()
        await server.stop(grace=0.2)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert server.connection_count == 0
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await client.read_answer()
        await client.close()


@uvloop_only
async def test_the_port_is_known_after_start_and_connections_are_counted() -> None:
    async with serving(lambda req: HOT) as server:
        assert server.port > 0
        with socket.create_connection(("127.0.0.1", server.port)):
            await eventually(lambda: server.connection_count == 1)
        await eventually(lambda: server.connection_count == 0)


# Response types


def test_prerendered_responses_are_the_rendered_bytes() -> None:
    response = Response(404, b"no", "text/plain", (("Cache-Control", "max-age=120"),))
    raw = response.prerender()
    assert raw.data == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n"
        b"Cache-Control: max-age=120\r\n\r\nno"
    )
    assert raw.data[: raw.head_length] == response.head()
    assert raw.head(b"Connection: close\r\n").endswith(b"Connection: close\r\n\r\n")
    assert (
        render_head(200, 0, "a/b")
        == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: a/b\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        (("Content-Length", "5"),),
        (("connection", "close"),),
        (("Transfer-Encoding", "chunked"),),
        (("X-Evil", "a\r\nSet-Cookie: b"),),
        (("Bad Name", "v"),),
        (("X", "caf\u00e9\u2603"),),
    ],
)
def test_responses_refuse_headers_that_break_framing(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError):
        Response(200, b"", headers=headers)


@pytest.mark.parametrize("status", [100, 204, 304, 600, 199])
def test_responses_refuse_statuses_without_a_body(status: int) -> None:
    with pytest.raises(ValueError):
        Response(status)


def test_a_raw_response_must_say_where_its_head_ends() -> None:
    data = HOT.data
    with pytest.raises(ValueError):
        RawResponse(data, HOT.head_length - 1, 200)


def test_file_response_from_path_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        FileResponse.from_path(tmp_path)


def test_the_servers_fast_request_constructor_builds_an_ordinary_request() -> None:
    args = ("GET", b"/a%20b", "/a b", True, ((b"host", b"x"),))
    fast, ordinary = _new_request(*args), Request(*args)
    assert fast == ordinary
    assert hash(fast) == hash(ordinary)
    with pytest.raises(AttributeError):
        fast.path = "/elsewhere"  # type: ignore[misc]


def test_server_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        ServerLimits(max_pipeline=0)
    with pytest.raises(ValueError):
        ServerLimits(idle_timeout=0)
