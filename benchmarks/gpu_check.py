"""The GPU check: every CUDA backend of the fused model timed with parity, in one bounded invocation.

    python3 -m pip install --no-deps --no-build-isolation -e . && python3 benchmarks/gpu_check.py --out OUT
    python3 benchmarks/gpu_check.py --out /tmp/check --dry-run   # anywhere, no CUDA: CPU stand-ins

1. `pytest -m "(cuda or tensorrt) and not slow"` starts in the background (its own process group, killed
   with its workers at its limit; `--skip-tests` leaves it out);
2. a subprocess trains the fused model for seconds on generated faces on the device (so its outputs are
   decided: parity on a near-uniform random init means nothing), computes the eager fp32 reference on the
   CPU for the parity inputs, and exports what the usable backends need; TensorRT engines, where TensorRT
   is installed, are built in a subprocess of their own;
3. the plain torchvision ResNet-18 baseline, the training-throughput ratio (benchmarks/gpu_train_throughput.py)
   and then every CUDA backend of the registry, each in its own subprocess with a time limit: per backend,
   parity of every parity input at each timed batch size (1 and 256), then >= 3 interleaved repeats per
   batch size (median of the repeats' medians, p90/p99 over >= 200 calls), the load and first-call
   (compile / capture / autotune) times and the numerics settings;
4. after every subprocess a JSON line per row is appended to OUT/results.jsonl and OUT/gpu_check.md is
   rebuilt from it: a crash, a timeout or the command limit loses at most the row in flight, which is
   recorded as failed with its reason (and whatever it had measured).

Everything stops by --budget-s (default 360 s; the tests included). Large files (data, checkpoints, exports,
logs) go to a work folder outside OUT (default: a new folder under the system's temporary directory); OUT
gets only small files. Exit code: 0 when everything that ran passed (targets are reported, not enforced),
1 on a failed or crashed row, a parity failure or failed tests, 2 without a CUDA device (unless --dry-run).
Nothing is installed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also runs from a plain checkout (and the job subprocesses import benchmarks.gpu)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for results.jsonl, gpu_check.md, gpu_check.json, tests.log")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for data, checkpoints, exports and logs; outside OUT (default: a new temp folder)")
    ap.add_argument("--dry-run", action="store_true", help="no CUDA needed: CPU stand-ins exercise every non-CUDA path")
    ap.add_argument("--budget-s", type=float, default=360, help="the whole run, tests included, ends by then")
    ap.add_argument("--tests-timeout", type=float, default=150, help="limit for the background tests")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--backends", default=None, help="comma-separated backend keys (default: every CUDA backend; "
                                                     "with --dry-run: pytorch,onnxruntime)")
    ap.add_argument("--timing", choices=("device", "end-to-end"), default="device")
    ap.add_argument("--batch-sizes", default=None, help="default 1,256 (1,8 with --dry-run)")
    ap.add_argument("--image-size", type=int, default=None, help="default 224 (32 with --dry-run)")
    ap.add_argument("--parity-images", type=int, default=None, help="default 256 (8 with --dry-run)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing blocks per row (>= 3)")
    ap.add_argument("--min-calls", type=int, default=None, help="timed calls per row, all blocks (default 210; 12 dry)")
    ap.add_argument("--job-timeout", type=float, default=120, help="limit per backend subprocess (torch.compile: 2x)")
    ap.add_argument("--faces-per-class", type=int, default=None, help="generated faces per class (default 400; 15 dry)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of the check's model (default 3; 1 dry)")
    ap.add_argument("--skip-train-throughput", action="store_true")
    ap.add_argument("--inject-fault", action="append", choices=("crash", "hang"), default=[],
                    help="test hook (--dry-run only): an extra stand-in job that segfaults or hangs after loading, "
                         "to show the isolation keeps every other row")
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)  # internal: run one job subprocess
    args = ap.parse_args(argv)
    if args.job is None and args.out is None:
        ap.error("--out is required")
    if args.inject_fault and not args.dry_run:
        ap.error("--inject-fault is a test hook for --dry-run only")
    if args.repeats < 3 and not args.dry_run:
        ap.error("--repeats must be >= 3 (the report's medians are medians of repeats)")
    return args


def work_folder(args: argparse.Namespace, out: Path) -> Path:
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))).resolve()
    if work == out or out in work.parents:
        raise SystemExit(f"error: --work {work} is inside --out {out}: only small files belong in OUT; "
                         "choose a work folder elsewhere")
    work.mkdir(parents=True, exist_ok=True)
    return work


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.job is not None:
        from benchmarks.gpu.jobs import job_main

        return job_main(args.job)
    from benchmarks.gpu.parent import Check
    from benchmarks.gpu.steps import run_check

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return run_check(Check(args, out, work_folder(args, out)))


if __name__ == "__main__":
    sys.exit(main())
