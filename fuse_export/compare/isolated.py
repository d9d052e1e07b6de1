"""Run one piece of a long measurement in its own process, with a time limit, and say how it ended.

A segfault in a CUDA library, an out-of-memory kill or a stuck compile then costs one row, not the run:
the child gets its own process group (so a timeout kills its workers too: pytest's, a DataLoader's) and,
on Linux, dies with its parent (so a killed benchmark leaves nothing running on the GPU).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
TERM_GRACE_S = 3.0


@dataclass
class Outcome:
    """How a child ended: `ok` (exit 0), `exited` (another code), `crashed` (a signal) or `timeout`."""

    status: str
    returncode: int | None
    seconds: float
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl here: the group kill on timeout still applies
            pass


def kill_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:  # the leader is gone; its group may not be: make sure
                os.killpg(proc.pid, signal.SIGKILL)
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {"SIGKILL": " (killed: out of host memory, or by hand?)", "SIGSEGV": " (segmentation fault)",
                "SIGABRT": " (aborted: a failed assertion in native code?)"}.get(name, "")
        return f"crashed: killed by {name}{hint}"
    return f"exited with code {returncode}"


def start(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in a new session (its own process group), stdout and stderr into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True,
                                preexec_fn=_die_with_parent)


def finish(proc: subprocess.Popen, timeout_s: float, started: float) -> Outcome:
    """Wait up to `timeout_s` for `proc`; on timeout kill its process group."""
    try:
        rc = proc.wait(timeout=max(0.1, timeout_s))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return Outcome("timeout", proc.returncode, round(time.perf_counter() - started, 1),
                       f"timed out after {timeout_s:.0f} s (killed with its process group)")
    try:  # the leader exited: anything it left in its group (workers) goes with it
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    seconds = round(time.perf_counter() - started, 1)
    if rc == 0:
        return Outcome("ok", 0, seconds)
    return Outcome("crashed" if rc < 0 else "exited", rc, seconds, describe_exit(rc))


def run(cmd: Sequence[str], timeout_s: float, log: Path, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> Outcome:
    """Run `cmd` to the end or to `timeout_s`, isolated; never raises for what the child does."""
    t0 = time.perf_counter()
    return finish(start(cmd, log, env, cwd), timeout_s, t0)


def tail(path: Path, lines: int = 20, max_chars: int = 4000) -> list[str]:
    """The last lines of a log (for a failed row's reason)."""
    if not path.is_file():
        return []
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - max_chars))
        text = fh.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def append_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append complete lines and fsync: what was measured survives whatever kills us next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line (a line cut short by a crash is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
