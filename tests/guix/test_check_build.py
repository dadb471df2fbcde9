"""`guix build --check` as evidence: the command line, finding guix, running it.

Guix cannot be installed on this machine, so the real `guix build --check` is NOT run here.
The command line is a pure function and is checked exactly. The subprocess handling (exit
statuses, stderr relayed line by line, the time bound, killing) is checked against a small
executable that stands in for `guix` (p2pcache/testing/guix_stand_in.py) and answers as
Guix's sources say `guix build --check` does: exit 0 when the rebuild reproduced the outputs,
exit 1 with "may not be deterministic" on stderr when one differs, exit 1 on any other error.
"""

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from p2pcache.guix.check_build import (
    CheckResult,
    CheckVerdict,
    GuixNotFoundError,
    check_build_command,
    classify,
    resolve_guix,
    run_check_build,
)
from p2pcache.testing.guix_stand_in import stand_in_calls, write_guix_stand_in

DRV = "/gnu/store/" + "a" * 32 + "-hello-2.12.drv"
OUT = "/gnu/store/" + "b" * 32 + "-hello-2.12"


def test_the_command_line_is_exactly_a_local_check_rebuild_without_substitutes():
    assert check_build_command("/usr/bin/guix", DRV, 3600) == [
        "/usr/bin/guix",
        "build",
        "--check",
        "--no-substitutes",
        "--no-offload",
        "--timeout=3600",
        DRV,
    ]
    # Guix takes whole seconds; a fraction is rounded down, never to 0.
    assert check_build_command("guix", DRV, 90.9)[5] == "--timeout=90"
    assert check_build_command("guix", DRV, 0.2)[5] == "--timeout=1"


@pytest.mark.parametrize("drv", ["/gnu/store/" + "a" * 32 + "-hello", "relative.drv", ""])
def test_only_a_derivation_path_is_rebuilt(drv):
    with pytest.raises(ValueError, match="not the store path of a derivation"):
        check_build_command("guix", drv, 10)


@pytest.mark.parametrize("timeout", [0, -1])
def test_the_time_bound_must_be_positive(timeout):
    with pytest.raises(ValueError, match="timeout must be positive"):
        check_build_command("guix", DRV, timeout)


def test_a_guix_missing_from_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GuixNotFoundError) as e:
        resolve_guix("guix")
    message = str(e.value)
    assert "'guix' not found on PATH" in message
    assert "guix build --check" in message and "[builder] guix" in message


def test_a_guix_path_that_is_not_executable_is_a_clear_error(tmp_path):
    plain = tmp_path / "guix"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(GuixNotFoundError, match="no executable file there"):
        resolve_guix(str(plain))
    with pytest.raises(GuixNotFoundError, match="no executable file there"):
        resolve_guix(str(tmp_path / "missing" / "guix"))


def test_guix_is_found_on_path_or_by_path(tmp_path, monkeypatch):
    script = write_guix_stand_in(tmp_path / "bin", {}, tmp_path / "db.sqlite")
    assert os.stat(script).st_mode & stat.S_IXUSR
    assert resolve_guix(str(script)) == str(script)
    monkeypatch.setenv("PATH", str(script.parent))
    assert resolve_guix("guix") == str(script)


DIFFERS = f"guix build: error: derivation `{DRV}' may not be deterministic: output `{OUT}' differs"
NOT_VALID = "guix build: error: some outputs of `x.drv' are not valid, so checking is not possible"
TIMED_OUT = "guix build: error: build of `x.drv' timed out after 60 seconds"


@pytest.mark.parametrize(
    ("status", "stderr", "verdict"),
    [
        (0, [], CheckVerdict.REPRODUCED),
        (0, ["guix build: error: may not be deterministic"], CheckVerdict.REPRODUCED),
        (1, [DIFFERS], CheckVerdict.DIFFERS),
        (1, [f"guix build: error: build of `{DRV}' failed"], CheckVerdict.FAILED),
        (1, [NOT_VALID], CheckVerdict.FAILED),
        (1, [TIMED_OUT], CheckVerdict.TIMED_OUT),
        (2, [], CheckVerdict.FAILED),
        (None, [], CheckVerdict.TIMED_OUT),
    ],
)
def test_classify_reads_the_exit_status_then_the_reason(status, stderr, verdict):
    assert classify(status, stderr) is verdict


def test_the_reason_is_the_last_error_line():
    result = CheckResult(CheckVerdict.FAILED, 1, 1.0, ("building x...", "guix build: error: no"))
    assert result.reason() == "exit status 1: guix build: error: no"
    assert CheckResult(CheckVerdict.TIMED_OUT, None, 1.0, ()).reason() == "killed"


def stand_in(tmp_path, mode):
    items = {DRV.rsplit("/", 1)[-1]: {"mode": mode, "output": OUT}}
    return write_guix_stand_in(tmp_path / "bin", items, tmp_path / "db.sqlite")


async def run(script, timeout=30.0, **kw):
    relayed = []
    result = await run_check_build(
        check_build_command(str(script), DRV, timeout), timeout, relayed.append, **kw
    )
    return result, relayed


async def test_a_reproduced_rebuild_exits_0_and_its_stderr_is_relayed(tmp_path):
    script = stand_in(tmp_path, "reproduce")
    result, relayed = await run(script)
    assert result.verdict is CheckVerdict.REPRODUCED and result.exit_status == 0
    assert relayed == ["The following derivation will be built:", f"  {DRV}", f"building {DRV}..."]
    assert result.stderr_tail == tuple(relayed)
    (call,) = stand_in_calls(script)
    assert call["args"] == check_build_command(str(script), DRV, 30)[1:]


async def test_a_rebuild_that_differs_is_not_reproduced(tmp_path):
    result, relayed = await run(stand_in(tmp_path, "differ"))
    assert result.verdict is CheckVerdict.DIFFERS and result.exit_status == 1
    assert "may not be deterministic" in relayed[-1] and OUT in relayed[-1]
    assert "may not be deterministic" in result.reason()


async def test_a_failed_rebuild_is_a_failure(tmp_path):
    result, _ = await run(stand_in(tmp_path, "fail"))
    assert result.verdict is CheckVerdict.FAILED and result.exit_status == 1
    assert result.reason() == f"exit status 1: guix build: error: build of `{DRV}' failed"


async def test_the_stand_in_refuses_a_command_line_guix_would_not_get(tmp_path):
    """The stand-in is strict about its arguments, so the tests above cannot pass by luck."""
    script = stand_in(tmp_path, "reproduce")
    relayed = []
    result = await run_check_build([str(script), "build", DRV], 30, relayed.append)
    assert result.verdict is CheckVerdict.FAILED and result.exit_status == 2
    assert "unexpected arguments" in relayed[-1]


async def test_a_rebuild_past_its_time_is_stopped(tmp_path):
    started = time.monotonic()
    result, _ = await run(stand_in(tmp_path, "hang"), timeout=1.0)
    assert result.verdict is CheckVerdict.TIMED_OUT and result.exit_status is None
    assert 1.0 <= result.seconds < 10 and time.monotonic() - started < 10


async def test_a_rebuild_that_ignores_sigterm_is_killed(tmp_path):
    script = stand_in(tmp_path, "hang-hard")
    result, relayed = await run(script, timeout=1.0, kill_grace=0.5)
    assert result.verdict is CheckVerdict.TIMED_OUT and result.exit_status is None
    assert result.seconds < 10
    assert relayed[-1] == f"building {DRV}..."  # what it said before it hung was relayed


async def test_an_overlong_stderr_line_is_cut_not_fatal(tmp_path):
    script = tmp_path / "guix"
    script.write_text("#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' x >&2\necho >&2\n"
                      "echo 'guix build: error: done' >&2\nexit 1\n")  # fmt: skip
    script.chmod(0o755)
    result, relayed = await run(script)
    assert result.verdict is CheckVerdict.FAILED and result.exit_status == 1
    assert relayed[-1] == "guix build: error: done"
    assert all(len(line) <= 64 * 1024 for line in relayed)


def is_gone(pid):
    """Exited: no such process, or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_an_interrupted_check_stops_guix(tmp_path):
    """guix runs in its own session (no terminal SIGINT reaches it): we must stop it."""
    script = stand_in(tmp_path, "hang-hard")
    task = asyncio.create_task(run(script, timeout=60.0))
    for _ in range(200):
        if stand_in_calls(script):
            break
        await asyncio.sleep(0.05)
    (call,) = stand_in_calls(script)
    assert not is_gone(call["pid"])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if is_gone(call["pid"]):
            break
        await asyncio.sleep(0.05)
    assert is_gone(call["pid"])


async def test_a_guix_that_cannot_be_run_is_a_clear_error(tmp_path):
    plain = tmp_path / "guix"
    plain.write_text("#!/bin/sh\n")  # not executable
    with pytest.raises(GuixNotFoundError, match=f"cannot run {plain}: Permission denied"):
        await run_check_build([str(plain), "build"], 10, print)


@pytest.mark.parametrize("cut", [1, 7, 4096, 65535, 65536, 65537, 70000, 200001])
async def test_stderr_lines_survive_any_chunking(cut):
    """However guix's stderr arrives in pieces, lines stay lines: an overlong one is cut at
    MAX_LINE and its rest dropped, and the next line starts clean (it used to be glued on)."""
    from p2pcache.guix.check_build import MAX_LINE, _stderr_lines

    data = b"first\n" + b"x" * 200_000 + b"\nguix build: error: done\nlast without LF"
    reader = asyncio.StreamReader(limit=MAX_LINE)

    async def feed() -> None:  # piece by piece, the reader running in between
        for start in range(0, len(data), cut):
            reader.feed_data(data[start : start + cut])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    lines = [line async for line in _stderr_lines(reader)]
    await feeder
    assert lines == [b"first", b"x" * MAX_LINE, b"guix build: error: done", b"last without LF"]
