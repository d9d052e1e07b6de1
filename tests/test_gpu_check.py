"""The GPU check survives first contact: crash/hang isolation, incremental results, interleaved timing, the
report; all on the CPU (`--dry-run`), with a real subprocess per job."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuse_export.compare import isolated
from fuse_export.compare.gpu_timing import Sampler, interleaved

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _alive(pid: int) -> bool:
    """A pid that exists and is not a zombie (a killed orphan may linger as one where nothing reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_isolated_run_names_crashes_timeouts_and_exit_codes(tmp_path):
    py = sys.executable
    ok = isolated.run([py, "-c", "print('fine')"], 30, tmp_path / "ok.log")
    assert ok.ok and ok.returncode == 0 and isolated.tail(tmp_path / "ok.log") == ["fine"]
    crash = isolated.run([py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], 30, tmp_path / "c.log")
    assert crash.status == "crashed" and crash.reason == "crashed: killed by SIGSEGV (segmentation fault)"
    code = isolated.run([py, "-c", "raise SystemExit(3)"], 30, tmp_path / "e.log")
    assert (code.status, code.reason) == ("exited", "exited with code 3")
    # A hang with a child of its own: the timeout kills the whole process group, the child too.
    pid_file = tmp_path / "child.pid"
    hang = ("import subprocess, sys, time;"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(600)")
    t0 = time.perf_counter()
    out = isolated.run([py, "-c", hang], 3, tmp_path / "h.log")
    assert out.status == "timeout" and out.reason.startswith("timed out after 3 s")
    assert time.perf_counter() - t0 < 20
    deadline = time.time() + 5
    while _alive(int(pid_file.read_text())) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid_file.read_text())), "the hung job's child outlived the timeout"


def test_results_jsonl_keeps_complete_lines_only(tmp_path):
    path = tmp_path / "r.jsonl"
    isolated.append_jsonl(path, [{"a": 1}, {"b": 2}])
    with open(path, "a") as fh:
        fh.write('{"cut short by a cra')  # what a kill in the middle of a write leaves
    assert isolated.read_jsonl(path) == [{"a": 1}, {"b": 2}]


class Scripted(Sampler):
    """A sampler whose per-call times are given (the arithmetic of interleaving, without a clock)."""

    def __init__(self, name: str, blocks: list[list[float]], order: list[str]) -> None:
        super().__init__(lambda: None)
        self.name, self.blocks, self.order = name, list(blocks), order

    def sample(self, n: int) -> list[float]:
        self.order.append(self.name)
        return self.blocks.pop(0)[:n]


def test_interleaved_repeats_take_turns_and_report_median_of_medians():
    order: list[str] = []
    a = Scripted("a", [[1e-3] * 4, [3e-3] * 4, [2e-3] * 3 + [9e-3]], order)
    b = Scripted("b", [[5e-4] * 4] * 3, order)
    stats = interleaved({"a": a, "b": b}, repeats=3, min_calls=10, warmup=0)
    assert order == ["a", "b", "b", "a", "a", "b"]  # turns, the order reversed every other round
    s = stats["a"]
    assert s.block_medians_ms == pytest.approx([1.0, 3.0, 2.0]) and s.median_ms == pytest.approx(2.0)
    assert s.calls == 12 and s.repeats == 3 and s.p99_ms > 8.0  # p99 over every call of every block
    assert stats["b"].median_ms == pytest.approx(0.5)
    with pytest.raises(ValueError):
        interleaved({"a": a}, repeats=0)


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_keep_the_work_folder_out_of_out_and_faults_in_dry_runs(tmp_path):
    script = _script()
    args = script.parse_args(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "out" / "work")])
    with pytest.raises(SystemExit, match="is inside --out"):
        script.work_folder(args, (tmp_path / "out").resolve())
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(tmp_path), "--inject-fault", "crash"])  # not without --dry-run
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(tmp_path), "--repeats", "2"])  # fewer than 3 repeats on the GPU
    args = script.parse_args(["--out", str(tmp_path / "o")])
    assert args.budget_s == 360 and args.repeats == 3 and not args.skip_tests
    from benchmarks.gpu.parent import TEST_MARKER  # importable: loading the script put the checkout on sys.path

    assert TEST_MARKER == "(cuda or tensorrt) and not slow"


def test_cuda_device_gets_an_index():
    from fuse_export.runners.cuda_base import cuda_device

    assert cuda_device("cuda:1").index == 1 and cuda_device(2).index == 2
    with pytest.raises(ValueError, match="not a CUDA device"):
        cuda_device("cpu")


def test_dry_run_keeps_every_other_row_when_a_backend_crashes_or_hangs(tmp_path):
    """--dry-run with an injected segfault and an injected hang (with a child process): both rows are failed
    with their reason, the rows after them are measured, and the report is rebuilt from results.jsonl."""
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--work", str(work), "--dry-run", "--skip-tests",
           "--backends", "pytorch", "--inject-fault", "crash", "--inject-fault", "hang", "--job-timeout", "400"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: rows failed (the injected ones)
    rows = isolated.read_jsonl(out / "results.jsonl")
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "environment" and kinds[-1] == "end" and rows[-1]["exit_code"] == 1
    prep = next(r for r in rows if r["kind"] == "prepare")
    assert prep["status"] == "ok" and prep["decided"]["of"] == 8 and 0 <= prep["decided"]["count"] <= 8
    timing = [r for r in rows if r["kind"] == "timing" and r["backend"] and r["backend"].startswith("pytorch (")]
    crash, hang = timing[0], timing[1]
    assert crash["backend"] == "pytorch (CPU stand-in, injected crash)" and crash["status"] == "failed"
    assert crash["reason"] == "crashed: killed by SIGSEGV (segmentation fault)"
    assert hang["status"] == "failed" and hang["reason"].startswith("timed out after 15 s")
    assert not _alive(int((work / "hang-child.pid").read_text()))  # the hang's child went with its group
    survivors = [r for r in timing[2:] if r["status"] == "ok"]  # measured after the crash and the hang
    assert [r["batch"] for r in survivors] == [1, 8]
    for r in survivors:
        assert r["parity"]["passed"] and r["parity"]["samples"] == 8
        lat = r["latency"]
        assert lat["repeats"] == 3 and lat["calls"] >= 12 and len(lat["block_medians_ms"]) == 3
    train = next(r for r in rows if r["kind"] == "train-throughput")
    assert train["status"] == "ok" and train["result"]["ratio"] > 0
    skipped = {r["backend"]: r["reason"] for r in rows if r.get("status") == "skipped"}
    assert "pytorch-compile-fp16" in skipped and skipped["resnet18 baseline"].startswith("dry run")
    md = (out / "gpu_check.md").read_text()
    assert "crashed: killed by SIGSEGV" in md and "timed out after 15 s" in md
    assert "| pytorch (CPU stand-in) | 8 |" in md and "not judged in a dry run" in md
    assert "decided (top-2 gap > fp16 bound 0.01)" in md and "Training throughput" in md and "Wall time" in md
    assert json.loads((out / "gpu_check.json").read_text())["rows"] == rows
    # Only small files come back from OUT; the data, checkpoint and logs stayed in the work folder.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "results.jsonl"]
    assert all(p.stat().st_size < 1_000_000 for p in out.iterdir())
    assert (work / "train" / "best.pt").is_file() and (work / "parity.npz").is_file()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA exit; this machine has CUDA")
def test_without_cuda_and_without_dry_run_it_exits_2(tmp_path):
    assert _script().main(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--skip-tests"]) == 2


def test_report_prints_numerics_beside_the_baseline_and_the_targets():
    """The GPU rows' shape (as the jobs write them) through the report: numerics next to the baseline's,
    decided and all-input agreement, the targets, a failed row with what it measured before."""
    import numpy as np

    from fuse_export.compare.parity import compare_outputs
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu.report import markdown, summarize

    order: list[str] = []
    stats = interleaved({1: Scripted("1", [[2.5e-4] * 70] * 3, order), 256: Scripted("256", [[3e-3] * 70] * 3, order)},
                        repeats=3, min_calls=210, warmup=0)
    p = np.array([[0.7, 0.2, 0.1], [0.335, 0.333, 0.332]])
    ref = {"probabilities": p, "logits": np.log(p), "confidence": np.ones((2, 1))}
    parity = compare_outputs("pytorch-cuda-graph-fp16", ref, {k: v.copy() for k, v in ref.items()}, "fp16").to_dict()
    fused_n = {"precision": "fp16", "mode": "graph", "layout": "channels_last", "batchnorm_folded": True,
               "tf32_conv": False, "tf32_matmul": False, "cudnn_autotune": True}
    base_n = {**fused_n, "batchnorm_folded": False}
    rows = [{"kind": "environment", "date": "D", "dry_run": False, "budget_s": 360, "repeats": 3, "min_calls": 210}]
    for size in (1, 256):
        rows.append({"kind": "timing", "backend": "pytorch-cuda-graph-fp16", "batch": size, "status": "ok",
                     "latency": stats[size].to_dict(), "images_per_s": size / (stats[size].median_ms / 1e3),
                     "load_s": 1.0, "first_call_s": 0.5, "parity": parity, "numerics": fused_n})
        rows.append({"kind": "timing", "backend": "resnet18 CUDA graph fp16", "batch": size, "status": "ok",
                     "baseline": True, "latency": stats[size].to_dict(), "images_per_s": 1.0, "parity": None,
                     "numerics": base_n})
    rows.append({"kind": "timing", "backend": "pytorch-compile-fp16", "batch": None, "status": "failed",
                 "reason": "crashed: killed by SIGSEGV (segmentation fault)",
                 "partial": {"load_s": 2.0, "parity": {"1": parity}}})
    md = markdown(rows, final=True)
    assert "| pytorch-cuda-graph-fp16 | 1 | 0.250 | 0.250 | 0.250 | 3x70 | 4,000 |" in md
    assert "fp16, graph, channels_last, TF32 conv off/matmul off, autotune on, BN folded" in md
    assert "| resnet18 CUDA graph fp16 | 256 |" in md and "baseline (another model)" in md
    assert "| 100.00% (1/2) | 100.00% | pass |" in md  # decided agreement (1 of 2 decided), all-input agreement
    assert "batch-1 latency <= 0.30 ms: pytorch-cuda-graph-fp16 0.250 ms -> met" in md
    assert "batch-256 >= 80,000 img/s: pytorch-cuda-graph-fp16 85,333 img/s -> met" in md
    assert "measured before that: loaded in 2.0 s, parity at batch 1 pass" in md
    s = summarize(rows)
    assert s["failed"] == ["pytorch-compile-fp16"] and s["best_batch1"]["met"]
