"""The GPU check's parent process: the budget, the work folder, one subprocess per job, and the results log
(OUT/results.jsonl, with OUT/gpu_check.md and gpu_check.json rebuilt from it after every job)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# Best first, so that a tight budget cuts the least interesting rows (each cut is reported with the reason).
ORDER = ["pytorch-compile-fp16", "pytorch-cuda-graph-fp16", "tensorrt-fp16-graph", "tensorrt-fp16", "pytorch-cuda",
         "pytorch-cuda-fp16", "pytorch-cuda-bf16", "onnxruntime-cuda-fp16", "onnxruntime-cuda", "onnxruntime-trt-fp16",
         "onnxruntime-trt", "tensorrt", "tensorrt-int8", "torchscript-cuda"]
DRY_STAND_INS = ["pytorch", "onnxruntime"]  # the CPU rows that exercise parity, timing and report in --dry-run
TEST_MARKER = "(cuda or tensorrt) and not slow"
RESERVE_S = 5.0  # kept back from every limit for the final report
MIN_JOB_S = 15.0  # a job is not started with less than this left


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Check:
    """The parent process: the budget, the work folder, the job subprocesses and the results log."""

    def __init__(self, args: Any, out: Path, work: Path) -> None:
        self.args, self.out, self.work = args, out, work
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget_s
        self.rows: list[dict[str, Any]] = []
        self.results = out / "results.jsonl"
        self.results.unlink(missing_ok=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def record(self, rows: list[dict[str, Any]], final: bool = False) -> None:
        from benchmarks.gpu.report import markdown, summarize
        from fuse_export.compare.isolated import append_jsonl
        from fuse_export.fileio import atomic_open, write_json

        append_jsonl(self.results, rows)  # first: whatever happens next, the figures are on disk
        self.rows += rows
        try:
            text = markdown(self.rows, final)
            summary = summarize(self.rows)
        except Exception as exc:  # noqa: BLE001 - a report bug must not end the run; results.jsonl has it all
            log(f"report rendering failed ({type(exc).__name__}: {exc}); results.jsonl is complete")
            text, summary = (f"Report rendering failed ({type(exc).__name__}: {exc}); every row is in "
                             "results.jsonl.\n"), {"error": f"{type(exc).__name__}: {exc}"}
        with atomic_open(self.out / "gpu_check.md", "w") as fh:
            fh.write(text)
        write_json(self.out / "gpu_check.json", {"summary": summary, "rows": self.rows})

    def skip(self, kind: str, label: str | None, reason: str) -> None:
        log(f"{label or kind}: skipped ({reason})")
        self.record([{"kind": kind, "backend": label, "batch": None, "status": "skipped", "reason": reason}])

    def job(self, name: str, kind: str, spec: dict[str, Any], cap_s: float, row_kind: str,
            label: str | None = None, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Run one job subprocess; record its rows, or a failed row saying how it ended."""
        from fuse_export.compare.isolated import read_jsonl, run, tail

        left = self.left() - RESERVE_S
        if left < MIN_JOB_S:
            self.skip(row_kind, label or name, f"time budget used up ({max(0.0, self.left()):.0f} s left of "
                                               f"--budget-s {self.args.budget_s:.0f})")
            return self.rows[-1:]
        jobs = self.work / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "kind": kind, "row_kind": row_kind, "label": label, "work": str(self.work),
                "rows_file": str(jobs / f"{name}.rows.jsonl"), "state_file": str(jobs / f"{name}.state.json")}
        spec_path = jobs / f"{name}.json"
        spec_path.write_text(json.dumps(spec, indent=1, default=str))
        timeout = min(cap_s, left)
        log(f"{name}: subprocess, limit {timeout:.0f} s")
        log_path = jobs / f"{name}.log"
        outcome = run([sys.executable, str(SCRIPT), "--job", str(spec_path)], timeout, log_path,
                      {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
                       **(env or {})},
                      cwd=ROOT)
        rows = read_jsonl(Path(spec["rows_file"]))
        if not outcome.ok or not rows:
            state_file = Path(spec["state_file"])
            reason = outcome.reason or "the job ended without a result"
            if outcome.status == "timeout" and timeout < cap_s:
                reason += " (the rest of --budget-s)"
            rows.append({"kind": row_kind, "backend": label or name, "batch": None, "status": "failed",
                         "reason": reason, "seconds": outcome.seconds, "log_tail": tail(log_path),
                         "partial": json.loads(state_file.read_text()) if state_file.is_file() else {}})
        for r in rows:
            log(f"  {r.get('backend') or r['kind']}" + (f" batch {r['batch']}" if r.get("batch") else "") +
                f": {r['status']} " + (f"{r['latency']['median_ms']:.3f} ms, {r['images_per_s']:,.0f} img/s"
                                       if r.get("latency") else r.get("reason", "")))
        self.record(rows)
        return rows
