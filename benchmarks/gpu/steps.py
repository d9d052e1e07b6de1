"""The GPU check's sequence: environment, tests in the background, the model, the engines, the baseline, the
training throughput, every backend; each a recorded step that may fail alone."""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu.parent import DRY_STAND_INS, MIN_JOB_S, ORDER, RESERVE_S, ROOT, TEST_MARKER, Check, log

FAULT_LIMIT_S = 15.0  # limit of an --inject-fault job (it never finishes by itself)


def settings(args: Any, dry: bool) -> dict[str, Any]:
    """The run's sizes: the real check's, or small ones for a CPU dry run."""
    def pick(value, gpu, cpu):
        return value if value is not None else (cpu if dry else gpu)
    return {
        "batch_sizes": [int(v) for v in pick(args.batch_sizes, "1,256", "1,8").split(",")],
        "image_size": pick(args.image_size, 224, 32), "parity_images": pick(args.parity_images, 256, 8),
        "min_calls": pick(args.min_calls, 210, 12), "faces_per_class": pick(args.faces_per_class, 400, 15),
        "epochs": pick(args.epochs, 3, 1), "train_batch": 64 if not dry else 32, "loader_workers": 0 if dry else 6,
        "amp": "none" if dry else "bf16", "device": "cpu" if dry else "cuda", "seed": 0,
        "repeats": args.repeats, "warmup": 2 if dry else 10, "timing_mode": args.timing,
    }


def environment_row(check: Check, dry: bool, s: dict[str, Any]) -> dict[str, Any]:
    from fuse_export.compare.gpu_timing import HOST_TIMING, TIMING_MODES
    from fuse_export.app.doctor import doctor_report, environment_lines
    from fuse_export.exporters.manifest import tool_versions

    report = doctor_report()
    for line in environment_lines(report["environment"]):
        log(line)
    cpu = report["environment"].get("cpu") or {}
    flags = ", ".join(k for k, v in cpu.get("flags", {}).items() if v)
    return {"kind": "environment", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": dry, "command": " ".join(["python3", *sys.argv]), "environment": report["environment"],
            "cpu": f"{cpu.get('model', platform.processor() or platform.machine())} ({flags or 'flags n/a'})",
            "versions": {k: v for k, v in tool_versions().items()
                         if k in ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt")},
            "budget_s": check.args.budget_s, "work": str(check.work),
            "timing": HOST_TIMING if dry else TIMING_MODES[s["timing_mode"]], "repeats": s["repeats"],
            "min_calls": s["min_calls"], "batch_sizes": s["batch_sizes"], "backends_here": report["backends"]}


def selected_backends(args: Any, dry: bool) -> list[str]:
    from fuse_export.runners.registry import BACKENDS

    keys = ORDER + [k for k, b in BACKENDS.items() if b.device == "cuda" and k not in ORDER]
    wanted = [k.strip() for k in args.backends.split(",")] if args.backends else None
    unknown = [k for k in wanted or [] if k not in BACKENDS]
    if unknown:
        raise SystemExit(f"error: --backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if dry:
        return [k for k in (wanted or DRY_STAND_INS) if BACKENDS[k].device == "cpu"]
    return [k for k in keys if wanted is None or k in wanted]


def exports_needed(keys: list[str], trt_job: bool) -> list[list[str]]:
    """(format, precision) exports the prepare job makes: what the usable backends run, except what the
    TensorRT job exports itself (it builds its engines from ONNX files it exports and verifies)."""
    from fuse_export.runners.registry import BACKENDS

    need = []
    for k in keys:
        b = BACKENDS[k]
        if b.format and b.format != "tensorrt" and not (trt_job and b.format == "onnx"):
            if [b.format, b.precision] not in need and b.precision in ("fp32", "fp16"):
                need.append([b.format, b.precision])
    return sorted(need, key=lambda fp: fp[1] != "fp32")  # fp32 first: the reduced-precision ONNX derive from it


def start_tests(check: Check):
    from fuse_export.compare.isolated import start

    cmd = [sys.executable, "-m", "pytest", "-m", TEST_MARKER, "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    log(f"tests: {' '.join(cmd[2:])} (in the background, own process group)")
    return start(cmd, check.work / "pytest.log", cwd=ROOT), time.perf_counter()


def finish_tests(check: Check, proc, started: float, reserve_s: float) -> None:
    from fuse_export.compare.isolated import finish, tail

    limit = min(check.args.tests_timeout - (time.perf_counter() - started), check.left() - reserve_s)
    outcome = finish(proc, limit, started)
    log_path = check.work / "pytest.log"
    lines = tail(log_path, 400, 200_000)
    summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and any(
        w in ln for w in ("passed", "skipped", "failed", "error", "deselected"))), "")
    status = "passed" if outcome.returncode in (0, 5) else ("timeout" if outcome.status == "timeout" else "failed")
    (check.out / "tests.log").write_text("\n".join(lines) + "\n")  # the tail only: OUT holds small files
    log(f"tests {status}: {summary} {outcome.reason}")
    check.record([{"kind": "tests", "marker": TEST_MARKER, "status": "ok" if status == "passed" else "failed",
                   "result": status, "summary": summary, "reason": outcome.reason, "seconds": outcome.seconds,
                   "returncode": outcome.returncode, "log": "tests.log"}])


def train_throughput(check: Check, dry: bool) -> None:
    """benchmarks/gpu_train_throughput.py in a subprocess of its own; its JSON becomes one row."""
    from fuse_export.compare.isolated import run, tail

    left = check.left() - RESERVE_S
    if left < MIN_JOB_S:
        check.skip("train-throughput", "train-throughput", f"time budget used up ({max(0.0, check.left()):.0f} s left)")
        return
    path = check.work / "train_throughput.json"
    args = (["--device", "cpu", "--batch", "4", "--image-size", "32", "--steps", "1", "--warmup", "1", "--rounds",
             "1", "--loader-workers", "0", "--loader-batches", "2"] if dry else
            ["--device", "cuda", "--steps", "20", "--warmup", "5", "--rounds", "3"])
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_train_throughput.py"), *args, "--json", str(path)]
    log(f"train-throughput: {' '.join(cmd[1:])}")
    log_path = check.work / "jobs" / "train-throughput.log"
    outcome = run(cmd, min(180.0, left), log_path, {"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    if outcome.ok and path.is_file():
        res = json.loads(path.read_text())
        log(f"  fused / plain = {res['ratio']:.3f}")
        check.record([{"kind": "train-throughput", "status": "ok", "result": res, "seconds": outcome.seconds,
                       "command": " ".join(["python3", *cmd[1:]])}])
    else:
        check.record([{"kind": "train-throughput", "status": "failed", "reason": outcome.reason or "no JSON written",
                       "seconds": outcome.seconds, "log_tail": tail(log_path)}])


def artifact_for(manifest: dict[str, Any], b) -> dict[str, Any] | None:
    return next((a for a in manifest.get("artifacts", []) if a["format"] == b.format
                 and a.get("precision", "fp32") == b.precision and not a.get("embed_preprocessing")), None)


def backend_job(check: Check, name: str, key: str, fault: str | None, label: str, manifest: dict[str, Any],
                folder: Path, common: dict[str, Any]) -> None:
    from fuse_export.runners.registry import BACKENDS

    b = BACKENDS[key]
    art = artifact_for(manifest, b) if b.format else None
    if b.format and art is None:
        check.skip("timing", label, f"no {b.format} {b.precision} artifact was exported here (see the exports)")
        return
    env = {"NVIDIA_TF32_OVERRIDE": "0"} if key == "onnxruntime-trt" else None  # fp32 TensorRT without TF32
    cap = check.args.job_timeout * (2 if key == "pytorch-compile-fp16" else 1)
    if fault:  # the injected faults never finish: a short limit keeps the self-test short
        cap = min(cap, FAULT_LIMIT_S)
    check.job(name, "backend", {**common, "backend": key, "fault": fault,
                                "artifact": str(folder / art["file"]) if art else None}, cap, "timing", label, env)


def run_check(check: Check) -> int:
    from fuse_export.runners.cuda_base import cuda_status
    from fuse_export.runners.registry import BACKENDS

    args = check.args
    cuda_ok, cuda_why = cuda_status()
    if not cuda_ok and not args.dry_run:
        log(f"{cuda_why}: this check needs a CUDA GPU (use --dry-run to exercise the CPU paths)")
        return 2
    dry = bool(args.dry_run)
    s = settings(args, dry)
    check.record([environment_row(check, dry, s)])
    log(f"work folder {check.work} (outside OUT); results after every job in {check.results}")
    keys = selected_backends(args, dry)
    usable = []
    for k in (ORDER if dry else keys):
        ok, why = BACKENDS[k].available()
        if dry or not ok:
            check.skip("timing", k, "dry run: CUDA backends are not run" if dry and ok else why)
        else:
            usable.append(k)
    if dry:
        usable = keys
    trt_job = any(BACKENDS[k].format == "tensorrt" for k in usable)

    tests = None if args.skip_tests else start_tests(check)
    prep_spec = {**s, "exports": exports_needed(usable, trt_job)}
    prep = check.job("prepare", "prepare", prep_spec, 240.0 if not dry else 150.0, "prepare", "prepare")[-1]
    ready = prep["status"] == "ok"
    common = {**s, "checkpoint": prep.get("checkpoint"), "preprocessing": prep.get("preprocessing"),
              "parity_file": str(check.work / "parity.npz") if ready else None}
    if ready and trt_job:
        check.job("build-tensorrt", "build-tensorrt", {**common, "export_folder": prep["export_folder"]}, 300.0,
                  "export", "tensorrt engines")
    if tests is not None:  # the GPU is ours alone before anything is timed
        finish_tests(check, *tests, reserve_s=max(60.0, 0.4 * args.budget_s) if not dry else 10.0)

    if dry:
        check.skip("timing", "resnet18 baseline", "dry run: the baseline is CUDA only")
    else:
        if common["preprocessing"] is None:
            from fuse_export.contract import Preprocessing

            common["preprocessing"] = Preprocessing(image_size=s["image_size"]).to_dict()
        check.job("baseline", "baseline", common, args.job_timeout, "timing", "resnet18 baseline")
    if args.skip_train_throughput:
        check.skip("train-throughput", "train-throughput", "--skip-train-throughput")
    else:
        train_throughput(check, dry)

    manifest = {}
    folder = Path(prep.get("export_folder", check.work / "export"))
    if (folder / "manifest.json").is_file():
        from fuse_export.exporters.manifest_read import read_manifest

        manifest = read_manifest(folder)
    jobs = [(f"{DRY_STAND_INS[0]}+{fault}", usable[0] if usable else "pytorch", fault) for fault in args.inject_fault]
    jobs += [(k, k, None) for k in usable]
    for name, key, fault in jobs:
        label = f"{key} (CPU stand-in" + (f", injected {fault})" if fault else ")") if dry else key
        if not ready:
            check.skip("timing", label, f"no model: the prepare step failed ({prep.get('reason')})")
            continue
        try:
            backend_job(check, name, key, fault, label, manifest, folder, common)
        except Exception as exc:  # noqa: BLE001 - a bug of ours in one row must not cost the others
            check.record([{"kind": "timing", "backend": label, "batch": None, "status": "failed",
                           "reason": f"gpu_check itself failed on this row: {type(exc).__name__}: {exc}"}])

    failed = [r for r in check.rows if r.get("status") == "failed"]
    parity_bad = [r for r in check.rows if r.get("parity") and not r["parity"]["passed"]]
    # Parity on a model with too few decided inputs proves little: on the GPU that fails the run (a dry run's
    # seconds-long CPU training is not expected to get there).
    undecided = ready and not dry and not prep["decided"]["met"]
    code = 1 if failed or parity_bad or undecided else 0
    wall = round(time.perf_counter() - check.t0, 1)
    check.record([{"kind": "end", "wall_s": wall, "exit_code": code}], final=True)
    log(f"wrote {check.out / 'gpu_check.md'}, {check.results.name}, gpu_check.json in {wall} s; exit {code}")
    if args.work is None and not dry:
        log(f"work folder kept for inspection: {check.work}")
    return code
