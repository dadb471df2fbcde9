"""Check: the node alone on random keys over the benchmark's 1M-item index, and its CPU per
request, to tell whether the machine is at its usual speed before a full bench_endpoint run.

No baseline runs beside it (it is a check of the machine, not a comparison): it prints req/s
and the node's CPU time per request (from /proc/PID/stat), three 10 s runs of wrk with 64
connections after the index is read into the page cache. On 2026-11-26 at 01:16 UTC, at the
machine's usual speed, the node did 41,000-42,500 req/s at 23-25 µs per request; from 01:35 on
the same code measured 10-20k at 48-91 µs.

    python3 loadtest/node_random_keys.py [--workdir /var/tmp/p2pcache-bench]

Needs the work directory that bench_endpoint.py builds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_endpoint import random_key_files, read_files, serve_argv, wait_rendered
from harness import (
    RANDOM_PATHS_LUA,
    free_port,
    pinned_process,
    process_cpu_times,
    require_tools,
    rss_mib,
    wrk,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/p2pcache-bench"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    require_tools("wrk", "taskset")
    if not (args.workdir / "all.txt").exists():
        sys.exit(f"no benchmark index in {args.workdir}: run loadtest/bench_endpoint.py first")
    read_files(random_key_files(args.workdir, "p2pcache"))
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="node-random-") as tmp:
        lua = Path(tmp) / "random.lua"
        lua.write_text(RANDOM_PATHS_LUA)
        every_key = (str(args.workdir / "all.txt"),)
        with pinned_process(serve_argv(args.workdir, port, admin), port) as proc:
            wait_rendered(admin)
            base = f"http://127.0.0.1:{port}"
            wrk(base, 64, 2, script=lua, script_args=(str(args.workdir / "hot.txt"),))
            for run in range(1, args.runs + 1):
                before = sum(process_cpu_times(proc.pid))
                result = wrk(base, 64, args.duration, script=lua, script_args=every_key)
                used = sum(process_cpu_times(proc.pid)) - before
                requests = max(1.0, result.requests_per_second * args.duration)
                print(
                    f"run {run}: {result.requests_per_second:8.0f} req/s, "
                    f"{used / requests * 1e6:5.1f} µs of the node's CPU a request, "
                    f"RSS {rss_mib(proc.pid)[0]:.1f} MiB",
                    flush=True,
                )


if __name__ == "__main__":
    main()
