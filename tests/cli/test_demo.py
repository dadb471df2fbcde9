"""`p2pcache demo` as a user runs it: once and done, and running until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "p2pcache", "demo", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def workdir_of(output: str) -> Path:
    return Path(re.search(r"files in (\S+)", output).group(1))


def test_demo_once_fetches_an_item_through_another_node_and_says_where_to_look():
    process = demo("--once")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert re.search(r"found 1 provider\(s\): http://127\.0\.80\.1:\d+", out)
    assert re.search(
        r"its bytes hash to the narinfo's NarHash \(sha256:[0-9a-z]{52}\): verified", out
    )
    for name in ("seed", "node-b", "node-c"):
        assert f"  {name}:" in out
    assert len(re.findall(r"metrics +http://127\.0\.8[012]\.1:\d+/metrics", out)) == 3
    assert len(re.findall(r"status page +http://127\.0\.8[012]\.1:\d+/\n", out)) == 3
    assert "Traceback" not in err
    assert not workdir_of(out).exists()


def test_demo_runs_until_ctrl_c_then_stops_cleanly():
    process = demo()
    lines = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, f"the demo ended early: {''.join(lines)} {process.stderr.read()}"
            lines.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        out = "".join(lines)
        # It really is running: node-c's /metrics shows the transfer it just made.
        metrics_url = re.findall(r"metrics +(http://127\.0\.82\.1:\d+/metrics)", out)[0]
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        transfers = {
            s.labels.get("outcome"): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "p2pcache_transfers_total"
        }
        assert transfers == {"ok": 1.0}
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Stopping the three nodes..." in rest and "is removed" in rest
    assert "Traceback" not in err
    assert not workdir_of(out).exists()
