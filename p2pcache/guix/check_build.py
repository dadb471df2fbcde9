"""Rebuild a derivation with `guix build --check` and say whether it reproduced its outputs.

This is the second kind of evidence `p2pcache attest` accepts (protocol/attestation.md §2,
`Evidence: check`): where the daemon kept no build log, the builder rebuilds the item's
derivation here and now and the daemon compares the result with the outputs already in the
store. What Guix does (guix/scripts/build.scm, nix/libstore/build.cc):

* `--check` builds in check mode: the outputs must already be valid (otherwise the daemon
  refuses: "some outputs of ... are not valid, so checking is not possible"); it rebuilds them
  and, when one differs, fails with "derivation ... may not be deterministic: output ...
  differs". The store is left as it was: a check never replaces the valid outputs.
* Every daemon error reaches `guix build` as a store protocol error, which it reports on
  stderr and turns into exit status 1; success is exit status 0 with the output paths on
  stdout. So the exit status says reproduced or not, and stderr says why not.
* `--no-substitutes`: what is rebuilt, and any input that is missing, is built here, never
  downloaded (a check that fetched its inputs from the upstream would still be a rebuild, but
  nothing should be substituted on the way to evidence that this machine builds).
* `--no-offload`: the rebuild happens on this machine, the one whose key signs the word
  "built it myself"; an offloaded check would be another machine's word.
* `--timeout=SECONDS`: the daemon stops a build that runs longer; we also bound the whole
  command by the same wall-clock time (building missing inputs counts too) and kill it past
  that, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from p2pcache.errors import P2PCacheError

DEFAULT_GUIX_COMMAND = "guix"
DEFAULT_CHECK_TIMEOUT = 4 * 3600.0
"""Seconds a check may take by default: most packages rebuild well within it."""

KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when the command has to be stopped."""

STDERR_TAIL_LINES = 20
"""Lines of guix's stderr kept to explain a failure (all of it is relayed as it comes)."""

MAX_LINE = 64 * 1024
"""Longest stderr line relayed as is; longer ones are cut (a build may print anything)."""

NOT_DETERMINISTIC = "may not be deterministic"
"""What the daemon says when a rebuilt output differs (nix/libstore/build.cc)."""

DAEMON_TIMED_OUT = "timed out after"
"""What the daemon says when a build exceeds --timeout (nix/libstore/build.cc)."""


async def _stderr_lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The lines of `stream`, without their LF; a line longer than MAX_LINE is cut there and
    the rest of it, up to its LF, dropped (so what follows still starts a line of its own)."""
    pending = bytearray()
    skipping = False  # inside the rest of a line already cut
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            if pending and not skipping:
                yield bytes(pending)
            return
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                if not skipping and len(pending) > MAX_LINE:
                    yield bytes(pending[:MAX_LINE])
                    skipping = True
                if skipping:
                    pending.clear()
                break
            if not skipping:
                yield bytes(pending[: min(end, MAX_LINE)])
            skipping = False
            del pending[: end + 1]


class GuixNotFoundError(P2PCacheError):
    """The guix command cannot be run, so no rebuild can be evidence."""


class CheckVerdict(enum.StrEnum):
    REPRODUCED = "reproduced"
    """Exit status 0: the rebuild gave the outputs already in the store, bit for bit."""
    DIFFERS = "differs"
    """The daemon rebuilt it and an output differs: the build is not reproducible here."""
    FAILED = "failed"
    """Any other failure (the build failed, outputs not valid, the daemon unreachable...)."""
    TIMED_OUT = "timed-out"
    """Stopped for taking too long (by the daemon's --timeout or by our wall clock)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: CheckVerdict
    exit_status: int | None
    """guix's exit status; None when we killed it."""
    seconds: float
    stderr_tail: tuple[str, ...]
    """The last lines guix wrote on stderr, to say why a check failed."""

    def reason(self) -> str:
        """A short explanation for the user: the last error line guix printed, if any."""
        errors = [line for line in self.stderr_tail if "error" in line.lower()]
        last = (errors or list(self.stderr_tail) or [""])[-1].strip()
        status = "killed" if self.exit_status is None else f"exit status {self.exit_status}"
        return f"{status}: {last}" if last else status


def resolve_guix(command: str) -> str:
    """The executable that `command` (a name looked up on PATH, or a path) names.

    Raises GuixNotFoundError with the problem and the way out when there is none.
    """
    found = shutil.which(command)
    if found is None:
        where = "on PATH" if os.sep not in command else "(no executable file there)"
        raise GuixNotFoundError(
            f"cannot run guix: {command!r} not found {where}; `p2pcache attest --check` "
            "rebuilds items with `guix build --check`, so it needs Guix on this machine "
            "(set [builder] guix in the configuration, or --guix, to its path)"
        )
    return found


def check_build_command(guix: str, drv_path: str, timeout: float) -> list[str]:
    """The command line that rebuilds derivation `drv_path` in check mode (see the module)."""
    if not drv_path.endswith(".drv") or not drv_path.startswith("/"):
        raise ValueError(f"{drv_path[:200]!r} is not the store path of a derivation")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return [
        guix,
        "build",
        "--check",
        "--no-substitutes",
        "--no-offload",
        f"--timeout={max(1, int(timeout))}",
        drv_path,
    ]


def classify(exit_status: int | None, stderr_tail: Sequence[str]) -> CheckVerdict:
    """What a finished (exit_status) or killed (None) `guix build --check` means."""
    if exit_status is None:
        return CheckVerdict.TIMED_OUT
    if exit_status == 0:
        return CheckVerdict.REPRODUCED
    if any(NOT_DETERMINISTIC in line for line in stderr_tail):
        return CheckVerdict.DIFFERS
    if any(DAEMON_TIMED_OUT in line for line in stderr_tail):
        return CheckVerdict.TIMED_OUT
    return CheckVerdict.FAILED


async def run_check_build(
    command: Sequence[str],
    wall_clock: float,
    relay: Callable[[str], None],
    *,
    kill_grace: float = KILL_GRACE,
) -> CheckResult:
    """Run `command`, relaying each stderr line as it comes, for at most `wall_clock` seconds.

    Past that the command's process group is sent SIGTERM, then SIGKILL after `kill_grace`
    seconds (guix-daemon abandons a build whose client went away). Stdout is read and dropped
    (it only lists the output paths).
    """
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=MAX_LINE,
        )
    except OSError as e:
        raise GuixNotFoundError(f"cannot run {command[0]}: {e.strerror}") from None
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    assert process.stdout is not None and process.stderr is not None
    stderr, stdout = process.stderr, process.stdout

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        tail.append(line)
        relay(line)

    async def relay_stderr() -> None:
        async for raw in _stderr_lines(stderr):
            emit(raw)

    async def drain_stdout() -> None:
        while await stdout.read(65536):
            pass

    async def finish() -> int:
        await asyncio.gather(relay_stderr(), drain_stdout())
        return await process.wait()

    try:
        exit_status: int | None = await asyncio.wait_for(finish(), wall_clock)
    except TimeoutError:
        await _stop(process, kill_grace)
        exit_status = None
    except BaseException:
        # Interrupted (Ctrl-C, cancelled): guix runs in its own session, so it would not get
        # the terminal's SIGINT and would go on rebuilding; stop it before giving up.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        raise
    return CheckResult(
        classify(exit_status, tail), exit_status, time.monotonic() - started, tuple(tail)
    )


async def _stop(process: asyncio.subprocess.Process, kill_grace: float) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, and reap the process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), kill_grace)
            return
        except TimeoutError:
            continue
    await process.wait()
