"""kill -9 during `export --force` and `triton-repo --force`, at seeded moments: after every kill the target
folder is the old one or the new one, whole (only manifest-listed files with their recorded sha256; a
repository whose every model has its config, labels and verified model file), never missing or mixed, and a
rerun succeeds and leaves no staging folder behind.

Kill moments are seeded: a fraction of the write window (from the staging folder's appearance to the exit)
measured on a complete run first, counted from the moment the staging folder appears. Run as a script to print the kill -9 rows of the "hostile inputs" table:

    python tests/test_kill9.py        # builds a tiny model, then the kill runs (~3 min on 2 busy cores)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SEED = 11
KILLS = 3  # per command


@dataclass
class KillRun:
    command: str
    at_s: float
    state: str  # old | new | absent | BROKEN: ...


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fuse_export", *args]


def _stage_seen(parent: Path, name: str) -> bool:
    return any(p.name.startswith(f".{name}.stage-") for p in parent.iterdir())


def _run_watch(argv: list[str], parent: Path, name: str, kill_after_stage: float | None = None) -> tuple[float, bool]:
    """Run the command, polling for its staging folder (.NAME.stage-*). Without `kill_after_stage`: run to the
    end and return the seconds from the staging folder's appearance to the exit. With it: SIGKILL the process
    group that many seconds after the staging folder appeared (the window where files are being written and
    swapped); returns (seconds, killed)."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seen = None
    while p.poll() is None:
        now = time.perf_counter()
        if seen is None and _stage_seen(parent, name):
            seen = now
        if seen is not None and kill_after_stage is not None and now - seen >= kill_after_stage:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return now - seen, True
        time.sleep(0.005)
    if kill_after_stage is None:
        assert p.returncode == 0, p.stderr.read().decode()[-2000:] if p.stderr else p.returncode
    return (time.perf_counter() - seen) if seen else 0.0, False


def export_state(out: Path, old_sha: str, new_sha: str) -> str:
    """old / new / absent, or BROKEN with the reason."""
    from fuse_export.exporters.manifest_read import read_manifest

    if not out.exists():
        return "absent"
    try:
        m = read_manifest(out)  # every listed file present and whole (sha256), paths inside
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"BROKEN: {exc}"
    listed = {a["file"] for a in m["artifacts"]} | {c["file"] for a in m["artifacts"] for c in a.get("companions", [])}
    extra = sorted(p.name for p in out.iterdir() if p.name not in listed | {"manifest.json", "reference.npz"})
    missing = sorted(f for f in listed if not (out / f).is_file())
    if extra or missing:
        return f"BROKEN: unlisted {extra}, missing {missing}"
    sha = m["source_checkpoint"]["sha256"]
    return "old" if sha == old_sha else "new" if sha == new_sha else f"BROKEN: checkpoint {sha[:12]}"


def repo_state(repo: Path, export: Path) -> str:
    from fuse_export.fileio import sha256_file

    if not repo.exists():
        return "BROKEN: repository missing"
    shas = {a["sha256"] for a in json.loads((export / "manifest.json").read_text())["artifacts"]}
    models = sorted(p for p in repo.iterdir())
    if not models:
        return "BROKEN: empty"
    for m in models:
        files = [f for f in (m / "1").iterdir()] if (m / "1").is_dir() else []
        if not (m / "config.pbtxt").is_file() or not (m / "labels.txt").is_file() or len(files) != 1:
            return f"BROKEN: {m.name} incomplete"
        if sha256_file(files[0]) not in shas:
            return f"BROKEN: {m.name} model file differs from the export"
    return "whole"


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def kill_runs(export_src: Path, ckpt_a: Path, ckpt_b: Path, work: Path, kills: int = KILLS,
              seed: int = SEED) -> list[KillRun]:
    """The kill experiment; raises AssertionError naming the first broken state."""
    from fuse_export.fileio import sha256_file

    rng = random.Random(seed)
    runs: list[KillRun] = []
    out = work / "export"
    shutil.copytree(export_src, out)  # the old state: checkpoint A's artifacts
    sha_a, sha_b = sha256_file(ckpt_a), sha256_file(ckpt_b)
    # Alternate checkpoints so that every kill interrupts a real replacement of the whole folder.
    cmd = lambda ck: _cli("export", str(ck), "--out", str(out), "-f", "torchscript,onnx", "--force")  # noqa: E731
    window, _ = _run_watch(cmd(ckpt_b), work, "export")
    assert export_state(out, sha_a, sha_b) == "new"
    current = sha_b
    for i in range(kills):
        target = ckpt_a if current == sha_b else ckpt_b
        at = round(rng.uniform(0.0, 1.05) * window, 3)  # seconds into the staged write (a few past its end)
        _, killed = _run_watch(cmd(target), work, "export", at)
        state = export_state(out, current, sha256_file(target))
        runs.append(KillRun("export --force", at, state + ("" if killed else " (finished before the kill)")))
        assert not state.startswith("BROKEN"), state
        current = sha256_file(target) if state == "new" else current
    _run_watch(cmd(ckpt_a), work, "export")  # the rerun
    assert export_state(out, "", sha_a) == "new" and not _leftovers(work, "export")
    runs.append(KillRun("export --force (rerun after the kills)", 0.0, "new"))

    repo = work / "repo"
    rcmd = _cli("triton-repo", str(out), "--out", str(repo), "--force")
    _run_watch(rcmd, work, "repo")  # the first repository: the old state of every kill below
    window, _ = _run_watch(rcmd, work, "repo")
    for _ in range(kills):
        at = round(rng.uniform(0.0, 1.05) * window, 3)
        _, killed = _run_watch(rcmd, work, "repo", at)
        state = repo_state(repo, out)
        runs.append(KillRun("triton-repo --force", at, state + ("" if killed else " (finished before the kill)")))
        assert state == "whole", state
    _run_watch(rcmd, work, "repo")
    assert repo_state(repo, out) == "whole" and not _leftovers(work, "repo")
    runs.append(KillRun("triton-repo --force (rerun after the kills)", 0.0, "whole"))
    return runs


def _other_checkpoint(src: Path, dst: Path) -> None:
    import torch

    state = torch.load(src, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key] + 1e-3
    torch.save(state, dst)


@pytest.mark.slow
def test_kill9_leaves_whole_folders_and_a_rerun_succeeds(tiny_run, tiny_export, tmp_path):
    other = tmp_path / "other.pt"
    _other_checkpoint(tiny_run.best, other)
    runs = kill_runs(tiny_export, tiny_run.best, other, tmp_path)
    assert len(runs) == 2 * KILLS + 2


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from test_hostile_inputs import build_world

    with tempfile.TemporaryDirectory() as tmp:
        w = build_world(Path(tmp) / "world")
        runs = kill_runs(w.export, w.run / "best.pt", w.other_ckpt, Path(tmp))
    print("| command | killed (s after its staging folder appeared) | state after the kill |")
    print("|---|---:|---|")
    for r in runs:
        print(f"| {r.command} | {r.at_s if r.at_s else '-'} | {r.state} |")
    killed = [r for r in runs if r.at_s]
    print(f"\n{len(killed)} kill -9 runs, {sum(not r.state.startswith('BROKEN') for r in killed)} left a whole "
          f"folder; {len(runs) - len(killed)} reruns, all succeeded")
