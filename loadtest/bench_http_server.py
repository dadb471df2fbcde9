"""Micro-benchmark: p2pcache's HTTP server against nginx on the same files.

What it answers: is the Guix endpoint's server fast enough that it is never the bottleneck? The
baseline is nginx (one worker), since `guix publish` cannot be run here (spec section 8).

The servers run on core 1, one loaded at a time, and wrk on core 0 (`taskset`), over loopback:

- small: a 300-byte file, `wrk -t1 -c64` (nginx with sendfile and its open-file cache,
  p2pcache answering a pre-rendered response from memory, as the endpoint does for a hot
  narinfo);
- pipelined: the same file, 64 connections each writing `--depth` requests at once, as Guix
  does with narinfo batches (wrk with a Lua script);
- big: a 200 MB file, `wrk -t1 -c1` (one download, as Guix fetches NARs), nginx with sendfile,
  p2pcache with its FileResponse path.

Run from the repository root (nginx and wrk from Debian; uvloop installed):

    python3 loadtest/bench_http_server.py [--duration 10] [--depth 100] [--rounds 3]

The scenarios alternate between the servers for `--rounds` rounds. Reported: the best run (on
a shared machine, the one least disturbed by other load), the median, and each server's CPU
time per request (from /proc), which swings much less with other load than throughput does.

With `--floor`, a bare httptools protocol that answers from memory with no features at all is
measured too: the ceiling for anything built on httptools and uvloop.

The Python servers are this same file run as `--serve KIND PORT DIR` in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMALL_SIZE = 300
BIG_SIZE = 200 * 1024 * 1024
SERVER_CORE = "1"
CLIENT_CORE = "0"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/plain txt; application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""

PIPELINE_LUA = """\
init = function(args)
   local depth = tonumber(args[1]) or 1
   local r = {{}}
   for i = 1, depth do r[i] = wrk.format(nil, "{path}") end
   req = table.concat(r)
end
request = function() return req end
"""


def serve(port: int, root: Path) -> None:
    """The p2pcache side: the 300-byte file from memory, the big one with sendfile."""
    import uvloop

    from p2pcache.server.http_response import FileResponse, Response
    from p2pcache.server.http_server import HTTPServer, Request, ServerLimits

    small = Response(
        200, (root / "small.txt").read_bytes(), "text/plain", label="small"
    ).prerender()
    not_found = Response(404, b"Not found\n", label="other").prerender()
    big = root / "big.bin"

    def handle(request: Request) -> object:
        if request.path == "/small.txt":
            return small
        if request.path == "/big.bin":
            return FileResponse.from_path(big, label="big")
        return not_found

    async def main() -> None:
        server = HTTPServer(handle, ServerLimits(max_connections=4096))  # type: ignore[arg-type]
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_floor(port: int, root: Path) -> None:
    """The floor: a bare httptools protocol that writes one constant answer per request.

    No request object, no handler, no limits. What the p2pcache server costs above this is the
    price of its features; what this costs is uvloop, httptools and the kernel.
    """
    import httptools
    import uvloop

    body = (root / "small.txt").read_bytes()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (
        len(body),
        body,
    )

    class Bare(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(answer)  # type: ignore[attr-defined]

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    worker_pid: int  # the process that does the work (nginx: its one worker)


def start_server(name: str, argv: list[str], port: int) -> Server:
    proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *argv])
    wait_listening(port)
    worker = proc.pid
    if name == "nginx":
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        worker = int(children[0])
    return Server(name, port, proc, worker)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@dataclass
class Run:
    requests_per_second: float
    mib_per_second: float
    cpu_us_per_request: float  # the server's CPU time per request


def wrk(server: Server, path: str, connections: int, duration: int, *lua: str) -> Run:
    argv = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if lua:
        argv += ["-s", lua[0]]
    argv.append(f"http://127.0.0.1:{server.port}{path}")
    if lua[1:]:
        argv += ["--", *lua[1:]]
    cpu_before = cpu_seconds(server.worker_pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(server.worker_pid) - cpu_before
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{server.name} answered with errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    amount, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()  # type: ignore[union-attr]
    mib = float(amount) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit] / (1 << 20)
    return Run(rps, mib, cpu * 1e6 / (rps * duration))


def scenarios(args: argparse.Namespace, lua: str) -> dict[str, tuple]:
    return {
        "small": ("/small.txt", 64, args.duration),
        "pipelined": ("/small.txt", 64, args.duration, lua, str(args.depth)),
        "big": ("/big.bin", 1, args.duration),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--depth", type=int, default=100, help="pipelined requests per write")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure a bare httptools protocol (small and pipelined only)",
    )
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)  # KIND PORT DIR
    args = parser.parse_args()
    if args.serve:
        kind, port, root = args.serve
        (serve if kind == "p2pcache" else serve_floor)(int(port), Path(root))
        return
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install nginx wrk util-linux)")
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "root"
        root.mkdir()
        for d in (tmp, root):
            d.chmod(0o755)  # nginx's worker runs as nobody
        (root / "small.txt").write_bytes(os.urandom(SMALL_SIZE // 2).hex().encode())
        with open(root / "big.bin", "wb") as f:
            for _ in range(BIG_SIZE // (1 << 20)):
                f.write(os.urandom(1 << 20))
        lua = tmp / "pipeline.lua"
        lua.write_text(PIPELINE_LUA.format(path="/small.txt"))
        nginx_port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, root=root))
        servers = [start_server("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], nginx_port)]
        for kind in ("p2pcache", "floor") if args.floor else ("p2pcache",):
            port = free_port()
            argv = [sys.executable, __file__, "--serve", kind, str(port), str(root)]
            servers.append(start_server(kind, argv, port))
        try:
            print(
                f"servers on core {SERVER_CORE}, wrk on core {CLIENT_CORE}; "
                f"{args.rounds} alternating rounds of {args.duration} s"
            )
            runs: dict[tuple[str, str], list[Run]] = {}
            for server in servers:
                wrk(server, "/small.txt", 64, 2)  # warm up
            for _ in range(args.rounds):
                for name, scenario in scenarios(args, str(lua)).items():
                    for server in servers:
                        if server.name == "floor" and name == "big":
                            continue
                        runs.setdefault((server.name, name), []).append(wrk(server, *scenario))
        finally:
            for server in servers:
                stop_server(server)
    report(runs)


def report(runs: dict[tuple[str, str], list[Run]]) -> None:
    """Per server and scenario: the best run (the least disturbed by other load: most
    throughput, least CPU per request), the median, every run, and the ratios to nginx."""
    for scenario, field, unit in (
        ("small", "requests_per_second", "req/s"),
        ("pipelined", "requests_per_second", "req/s"),
        ("big", "mib_per_second", "MiB/s"),
    ):
        print(scenario)
        summary = {}
        for (name, which), measured in runs.items():
            if which != scenario:
                continue
            values = [getattr(r, field) for r in measured]
            best, median = max(values), statistics.median(values)
            cpu = min(r.cpu_us_per_request for r in measured)
            summary[name] = (best, median, cpu)
            each = ", ".join(f"{v:.0f}" for v in values)
            print(
                f"  {name:9} best {best:7.0f} {unit}, median {median:7.0f}"
                f"   {cpu:8.1f} us CPU/request   (runs: {each})"
            )
        nginx_best, nginx_median, nginx_cpu = summary["nginx"]
        for name, (best, median, cpu) in summary.items():
            if name != "nginx":
                print(
                    f"  {name} / nginx: best {best / nginx_best:.2f}x, "
                    f"median {median / nginx_median:.2f}x, "
                    f"{nginx_cpu / cpu:.2f}x less CPU per request"
                )


if __name__ == "__main__":
    main()
