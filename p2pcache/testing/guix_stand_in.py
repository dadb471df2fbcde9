"""A stand-in for the `guix` command, for tests of `p2pcache attest --check`. NOT Guix.

Guix cannot be installed on the machines these tests run on, so the real `guix build --check`
is never run by them. What the tests can check honestly is our side: the command line we
build, and how we handle what comes back. This writes a small executable that takes the
place of `guix` and answers as Guix's documented behaviour says (guix/scripts/build.scm,
guix/ui.scm, nix/libstore/build.cc of Guix):

* `reproduce`: a few progress lines on stderr, the output paths on stdout, exit status 0;
* `differ`: "guix build: error: derivation `D' may not be deterministic: output `O'
  differs" on stderr, exit status 1 (every daemon error is a store protocol error, which
  `guix build` reports and turns into status 1);
* `fail`: "guix build: error: build of `D' failed", exit status 1;
* `hang`: sleeps (a build that never ends), `hang-hard`: the same, ignoring SIGTERM;
* `rewrite-db`: rewrites the item's NarHash in the Guix database, then succeeds (what no
  check does: it lets a test show that the database is read again after the check).

It accepts exactly the arguments `p2pcache attest --check` passes and exits with status 2
("unexpected arguments") on anything else, so a wrong command line fails a test. Each call
is appended to `calls.jsonl` next to it (arguments, start and end times, pid), so a test can see
what was run, and that the runs did not overlap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODES = ("reproduce", "differ", "fail", "hang", "hang-hard", "rewrite-db")

_SCRIPT = r"""
import json, os, signal, sqlite3, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
control = json.loads((HERE / "control.json").read_text())
args = sys.argv[1:]
started = time.time()

def record():
    with open(HERE / "calls.jsonl", "a") as f:
        call = {"args": args, "start": started, "end": time.time(), "pid": os.getpid()}
        f.write(json.dumps(call) + "\n")

ok = (
    len(args) == 6
    and args[:4] == ["build", "--check", "--no-substitutes", "--no-offload"]
    and args[4].startswith("--timeout=") and args[4][10:].isdigit()
    and args[5].endswith(".drv")
)
if not ok:
    record()
    print("guix: unexpected arguments: " + " ".join(args), file=sys.stderr)
    sys.exit(2)
drv = args[5]
item = control["items"].get(drv.rsplit("/", 1)[-1], {})
mode = item.get("mode", "fail")
output = item.get("output", "")
print(f"The following derivation will be built:\n  {drv}", file=sys.stderr, flush=True)
print(f"building {drv}...", file=sys.stderr, flush=True)
if mode in ("hang", "hang-hard"):
    record()
    if mode == "hang-hard":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    sys.exit(0)
if mode == "differ":
    print(f"guix build: error: derivation `{drv}' may not be deterministic: output "
          f"`{output}' differs", file=sys.stderr)
    record()
    sys.exit(1)
if mode == "fail":
    print(f"guix build: error: build of `{drv}' failed", file=sys.stderr)
    record()
    sys.exit(1)
if mode == "rewrite-db":
    db = sqlite3.connect(control["db"])
    db.execute("UPDATE ValidPaths SET hash = ? WHERE path = ?", ("sha256:" + "ab" * 32, output))
    db.commit()
    db.close()
print(output)
record()
sys.exit(0)
"""


def write_guix_stand_in(directory: Path, items: dict[str, dict[str, str]], db: Path) -> Path:
    """Write the stand-in `guix` into `directory` and return its path.

    `items` maps a derivation's basename to {"mode": one of MODES, "output": the output path
    it names in its messages}; a derivation not listed fails. `db` is the Guix database
    `rewrite-db` edits.
    """
    for item in items.values():
        if item.get("mode") not in MODES:
            raise ValueError(f"unknown stand-in mode {item.get('mode')!r}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "control.json").write_text(json.dumps({"items": items, "db": str(db)}))
    script = directory / "guix"
    script.write_text(f"#!{sys.executable}\n" + _SCRIPT)
    script.chmod(0o755)
    return script


def stand_in_calls(script: Path) -> list[dict]:
    """The calls the stand-in recorded, in order."""
    log = script.parent / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
