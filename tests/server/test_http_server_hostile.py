"""Hostile and broken clients, grouped by attack: malformed requests, targets that are not
paths, request bodies, oversized heads, too many connections, deep pipelines, clients that
stall while sending or never read. The server answers what it refuses itself (with a
Content-Length) and never calls the handler for it; every hold a client can take is bounded."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from p2pcache.server.http_response import FileResponse, Response
from p2pcache.server.http_server import Request, RequestTargetError, ServerLimits, decode_target
from tests.server import RawClient, both_loops, eventually, request, serving, uvloop_only

OK = Response(200, b"ok\n").prerender()


class Recorder:
    """A handler that answers 200 and remembers the paths it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, req: Request) -> Response:
        self.paths.append(req.path)
        return Response(200, req.path.encode())


async def assert_refused(client: RawClient, status: int) -> None:
    """The next answer is `status` with a Content-Length, and then the server closes."""
    answer = await client.read_answer()
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert answer.content_length == len(answer.body) > 0
    assert await client.read_to_eof() == b""


# Malformed requests


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1 trailing\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.2\r\n\r\n",
    ],
)
@uvloop_only
async def test_a_malformed_request_is_a_400_and_the_handler_is_not_called(raw: bytes) -> None:
    handler = Recorder()
    async with serving(handler) as server:
        client = await RawClient.connect(server)
        await client.send(raw)
        await assert_refused(client, 400)
        await client.close()
    assert handler.paths == []


@pytest.mark.parametrize(
    "target",
    [
        b"/%zz",
        b"/%4",
        b"/abc%",
        b"/a%2Fb",
        b"/a%2fb",
        b"/%00",
        b"/%0A",
        b"/%0d%0aSet-Cookie:x",
        b"/%7F",
        b"/%ff",
        b"/%C3",
        b"/%C0%AF",
        b"/a#fragment",
        b"*",
        b"ftp://host/x",
        b"host:80",
    ],
)
@both_loops
async def test_a_target_that_is_not_a_decodable_path_is_a_400(target: bytes) -> None:
    handler = Recorder()
    async with serving(handler) as server:
        client = await RawClient.connect(server)
        await client.send(request(target))
        await assert_refused(client, 400)
        await client.close()
    assert handler.paths == []
    with pytest.raises(RequestTargetError):
        decode_target(target)


@pytest.mark.parametrize("raw", [b"GET /\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n"])
@uvloop_only
async def test_a_version_other_than_1_0_or_1_1_is_a_505(raw: bytes) -> None:
    handler = Recorder()
    async with serving(handler) as server:
        client = await RawClient.connect(server)
        await client.send(raw)
        await assert_refused(client, 505)
        await client.close()
    assert handler.paths == []


@both_loops
async def test_requests_before_a_malformed_one_are_answered_first() -> None:
    async def later(req: Request) -> Response:
        await asyncio.sleep(0.05)
        return Response(200, b"slow")

    def handle(req: Request) -> object:
        return later(req) if req.path == "/slow" else OK

    async with serving(handle) as server:  # type: ignore[arg-type]
        client = await RawClient.connect(server)
        await client.send(request("/slow") + request("/fast") + b"BROKEN\r\n\r\n" + request("/x"))
        assert (await client.read_answer()).body == b"slow"
        assert (await client.read_answer()).body == b"ok\n"
        await assert_refused(client, 400)
        await client.close()


@uvloop_only
async def test_an_upgrade_request_is_answered_then_the_connection_closes() -> None:
    handler = Recorder()
    async with serving(handler) as server:
        client = await RawClient.connect(server)
        upgrade = request("/ws", headers=(("Connection", "Upgrade"), ("Upgrade", "websocket")))
        await client.send(upgrade + b"\x81\x05hello")
        answer = await client.read_answer()
        assert (answer.status, answer.headers["connection"]) == (200, "close")
        assert await client.read_to_eof() == b""
        await client.close()
    assert handler.paths == ["/ws"]


# Request bodies


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"HEAD / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 405),
    ],
)
@both_loops
async def test_a_request_with_a_body_is_refused_and_the_connection_closed(
    raw: bytes, status: int
) -> None:
    handler = Recorder()
    async with serving(handler) as server:
        client = await RawClient.connect(server)
        await client.send(raw + request("/after"))
        await assert_refused(client, status)
        await client.close()
    assert handler.paths == []


@uvloop_only
async def test_other_methods_without_a_body_get_405_and_the_connection_stays() -> None:
    handler = Recorder()
    async with serving(handler) as server:
        client = await RawClient.connect(server)
        for method in ("OPTIONS", "DELETE", "POST", "PATCH"):
            answer = await client.get("/x", method=method)
            assert answer.status == 405
            assert answer.headers["allow"] == "GET, HEAD"
            assert answer.content_length == len(answer.body)
        assert (await client.get("/still-open")).status == 200
        assert (await client.get("/empty-body", headers=(("Content-Length", "0"),))).status == 200
        await client.close()
    assert handler.paths == ["/still-open", "/empty-body"]


# Oversized heads

SMALL_HEADS = ServerLimits(max_head_size=1024)


@pytest.mark.parametrize(
    "raw",
    [
        request("/" + "a" * 2000),
        request("/", headers=(("X-Big", "v" * 2000),)),
        request("/", headers=tuple((f"X-{i}", "v") for i in range(300))),
    ],
    ids=["long URL", "long header", "many headers"],
)
@both_loops
async def test_a_head_over_the_limit_is_a_431(raw: bytes) -> None:
    handler = Recorder()
    async with serving(handler, SMALL_HEADS) as server:
        client = await RawClient.connect(server)
        await client.send(raw)
        await assert_refused(client, 431)
        await client.close()
    assert handler.paths == []


@uvloop_only
async def test_a_head_just_under_the_limit_is_served() -> None:
    handler = Recorder()
    async with serving(handler, SMALL_HEADS) as server:
        client = await RawClient.connect(server)
        assert (await client.get("/", headers=(("X-Big", "v" * 900),))).status == 200
        await client.close()


@uvloop_only
async def test_a_header_dribbled_over_many_reads_is_cut_at_the_limit() -> None:
    """httptools holds an unfinished header line in memory; the server bounds it by counting
    what arrives while a head is incomplete."""
    handler = Recorder()
    async with serving(handler, SMALL_HEADS) as server:
        client = await RawClient.connect(server)
        answer = asyncio.create_task(client.read_answer())
        await client.send(b"GET / HTTP/1.1\r\nX-Long: ")
        for _ in range(100):  # 10 KB in 100-byte reads, ten times the limit, never a line end
            if answer.done():
                break
            await client.send(b"v" * 100)
            await asyncio.sleep(0.002)
        assert (await answer).status == 431
        assert await client.read_until_closed() == b""
        await client.close()
    assert handler.paths == []


# Connections


@both_loops
async def test_connections_over_the_limit_get_a_503_with_content_length() -> None:
    limits = ServerLimits(max_connections=2, linger_timeout=0.5)
    seen: list[tuple[str, int]] = []

    def observe(label: str, status: int, seconds: float, nbytes: int) -> None:
        seen.append((label, status))

    async with serving(lambda req: OK, limits, observe) as server:
        first = await RawClient.connect(server)
        second = await RawClient.connect(server)
        await eventually(lambda: server.connection_count == 2)
        third = await RawClient.connect(server)
        await third.send(request("/"))
        await assert_refused(third, 503)
        assert (await first.get("/")).status == 200  # the admitted ones are unaffected
        await first.close()
        await eventually(lambda: server.connection_count == 1)
        fourth = await RawClient.connect(server)
        assert (await fourth.get("/")).status == 200
        for client in (second, third, fourth):
            await client.close()
    assert ("refused", 503) in seen  # rejections show in the metrics


@uvloop_only
async def test_connections_over_twice_the_limit_are_reset_without_an_answer() -> None:
    limits = ServerLimits(max_connections=1, linger_timeout=5.0)
    async with serving(lambda req: OK, limits) as server:
        admitted = await RawClient.connect(server)
        await eventually(lambda: server.connection_count == 1)
        refused = await RawClient.connect(server)  # lingers after its 503
        await assert_refused(refused, 503)
        dropped = await RawClient.connect(server)
        assert await dropped.read_until_closed() == b""
        for client in (admitted, refused, dropped):
            await client.close()


# Pipelines


@both_loops
async def test_a_deep_pipeline_read_slowly_gets_every_answer_in_order() -> None:
    """5000 requests at once with room for 8: the handler never has more than 8 in flight,
    reading pauses instead of dropping anything, and every answer comes back in order."""
    in_flight, most = 0, 0
    rng = random.Random(5000)

    async def handle(req: Request) -> Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(rng.choice([0, 0, 0.001]))
        in_flight -= 1
        return Response(200, req.path.encode())

    async with serving(handle, ServerLimits(max_pipeline=8)) as server:
        client = await RawClient.connect(server)
        await client.send(b"".join(request(f"/{i}") for i in range(5000)))
        for i in range(5000):
            if i % 1000 == 0:
                await asyncio.sleep(0.05)  # a slow reader
            assert (await client.read_answer()).body == f"/{i}".encode()
        await client.close()
    assert most <= 8


@uvloop_only
async def test_a_client_that_does_not_read_stops_the_handler_being_called() -> None:
    """Flow control: with the client not reading, answers pile up only as far as the socket
    buffers, the transport's high-water mark and the pipeline bound allow."""
    body = os.urandom(32 * 1024)
    calls = 0

    def handle(req: Request) -> Response:
        nonlocal calls
        calls += 1
        return Response(200, body)

    async with serving(handle, ServerLimits(max_pipeline=8)) as server:
        client = await RawClient.connect(server, receive_buffer=64 * 1024)
        client.stop_reading()
        await client.send(b"".join(request(f"/{i}") for i in range(3000)))
        await asyncio.sleep(0.3)
        assert calls < 1000  # without flow control, all 3000 are answered at once
        client.writer.transport.resume_reading()  # type: ignore[attr-defined]
        for _ in range(3000):
            assert (await client.read_answer()).body == body
        assert calls == 3000
        await client.close()


# Timeouts


@both_loops
async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    async with serving(lambda req: OK, ServerLimits(idle_timeout=0.2)) as server:
        client = await RawClient.connect(server)
        assert (await client.get("/")).status == 200
        started = asyncio.get_running_loop().time()
        assert await client.read_to_eof() == b""
        assert 0.15 < asyncio.get_running_loop().time() - started < 2.0
        silent = await RawClient.connect(server)  # never sends anything
        assert await silent.read_to_eof() == b""
        await client.close()
        await silent.close()


@both_loops
async def test_a_busy_connection_outlives_the_idle_timeout() -> None:
    """Idle time counts from the last request, not from when the connection was opened."""
    async with serving(lambda req: OK, ServerLimits(idle_timeout=0.2)) as server:
        client = await RawClient.connect(server)
        for _ in range(6):  # three idle timeouts' worth of requests, never 0.2 s apart
            assert (await client.get("/")).status == 200
            await asyncio.sleep(0.1)
        await client.close()


@uvloop_only
async def test_a_slow_answer_is_not_cut_by_the_idle_timeout() -> None:
    async def slow(req: Request) -> Response:
        await asyncio.sleep(0.6)
        return Response(200, b"worth the wait")

    async with serving(slow, ServerLimits(idle_timeout=0.2)) as server:
        client = await RawClient.connect(server)
        assert (await client.get("/")).body == b"worth the wait"
        await client.close()


@pytest.mark.parametrize("dribble", [False, True], ids=["stalled", "slowloris"])
@both_loops
async def test_a_head_not_complete_within_the_head_timeout_is_dropped(dribble: bool) -> None:
    handler = Recorder()
    limits = ServerLimits(head_timeout=0.3, idle_timeout=60)
    async with serving(handler, limits) as server:
        client = await RawClient.connect(server)
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = asyncio.get_running_loop().time()
        if dribble:  # a byte every 50 ms keeps bytes flowing but never finishes the head
            for _ in range(40):
                if client.reader.at_eof():
                    break
                try:
                    await client.send(b"X")
                except ConnectionError:
                    break
                await asyncio.sleep(0.05)
        assert await client.read_until_closed() == b""
        assert asyncio.get_running_loop().time() - started < 2.0
        await client.close()
    assert handler.paths == []


@both_loops
async def test_a_client_that_never_reads_is_disconnected_after_the_write_timeout() -> None:
    body = os.urandom(256 * 1024)
    limits = ServerLimits(write_timeout=0.3)
    async with serving(lambda req: Response(200, body), limits) as server:
        client = await RawClient.connect(server, receive_buffer=4096)
        client.stop_reading()
        await client.send(b"".join(request(f"/{i}") for i in range(200)))
        await eventually(lambda: server.connection_count == 1)
        await eventually(lambda: server.connection_count == 0, timeout=3.0)
        client.writer.transport.abort()  # type: ignore[attr-defined]


@uvloop_only
async def test_a_file_to_a_client_that_never_reads_is_cut_and_the_file_closed(
    tmp_path: Path,
) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: big without writing it
    opened: list[int] = []

    def handle(req: Request) -> FileResponse:
        response = FileResponse.from_path(big)
        opened.append(response.fd)
        return response

    async with serving(handle, ServerLimits(write_timeout=0.3)) as server:
        client = await RawClient.connect(server, receive_buffer=4096)
        client.stop_reading()
        await client.send(request("/big"))
        await eventually(lambda: len(opened) == 1)
        await eventually(lambda: server.connection_count == 0, timeout=3.0)
        client.writer.transport.abort()  # type: ignore[attr-defined]
    assert len(opened) == 1
    assert not _still_open(opened[0], big)


def _still_open(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except FileNotFoundError:
        return False
