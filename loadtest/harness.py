"""Shared pieces of the benchmarks: nginx as the baseline, wrk as the load, CPU pinning.

Every benchmark here prints ratios against a baseline run side by side in the same go (never
absolute numbers alone). The machine has 2 cores: the server under test runs alone on one
(`taskset -c 1`), the load generator on the other (`taskset -c 0`), over loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/x-nix-narinfo narinfo; text/plain txt; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""

RANDOM_PATHS_LUA = """\
local paths = {}
init = function(args)
   for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
request = function()
   return wrk.format("GET", paths[math.random(#paths)])
end
"""


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)} (Debian: apt-get install nginx wrk util-linux)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def wait_metric(admin_port: int, name: str, at_least: float, timeout: float = 600.0) -> float:
    """Wait until the node's /metrics shows `name` at `at_least` or more; its value then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.startswith(name + " "):
                value = float(line.split()[1])
                if value >= at_least:
                    return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not reach {at_least} within {timeout} s")
        time.sleep(0.5)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def pinned_process(argv: list[str], port: int, **popen) -> Iterator[subprocess.Popen]:
    """Run `argv` on the server core until the block ends; wait until `port` listens."""
    proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *argv], **popen)
    try:
        wait_listening(port)
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def nginx(root: Path, tmp: Path) -> Iterator[int]:
    """nginx (one worker) serving `root` as static files; yields its port."""
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    with pinned_process(["nginx", "-c", str(conf), "-p", str(tmp)], port):
        yield port


@dataclass
class WrkResult:
    requests_per_second: float
    mib_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    errors: str | None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(out: str, percent: str) -> float | None:
    match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def wrk(
    url: str,
    connections: int,
    duration: int,
    *,
    script: Path | None = None,
    script_args: tuple[str, ...] = (),
    latency: bool = False,
) -> WrkResult:
    argv = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if latency:
        argv.append("--latency")
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    assert transfer is not None
    unit = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[transfer.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    return WrkResult(
        rps,
        float(transfer.group(1)) * unit / (1 << 20),
        _latency(out, "50") if latency else None,
        _latency(out, "99") if latency else None,
        errors.group(0) if errors else None,
    )


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def process_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (nginx's worker is a child of its master)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def disk_read_bytes(pid: int) -> int:
    """Bytes a process tree has read from storage so far (not from the page cache).

    A server that answers random keys from files must find them in the page cache to be
    measured for itself rather than for the disk; this says whether it did."""
    total = 0
    for member in process_tree(pid):
        try:
            io = Path(f"/proc/{member}/io").read_text()
        except OSError:
            continue
        total += int(re.search(r"^read_bytes:\s+(\d+)", io, re.M).group(1))  # type: ignore[union-attr]
    return total
