"""The GPU check of the GPU-backends issue, in one invocation (under 8 minutes on an H200):

1. the GPU-marked tests (`pytest -m "cuda or tensorrt"`), run in a subprocess while step 2 exports;
2. a fixed fused model (seeded random init: latency does not depend on the weights, and parity only needs
   one fixed model) saved as a checkpoint and exported fresh: TorchScript, ONNX fp32, ONNX fp16, and
   TensorRT engines where TensorRT is installed;
3. every CUDA backend of the registry at batch sizes 1, 32 and 256 (CUDA events, after warm-up), with parity
   against eager fp32 on the CPU over 256 images, plus a plain torchvision ResNet-18 in eager fp32 as the
   baseline measured in the same run; backends that cannot run here are listed with the reason;
4. results with date, GPU, driver and versions as markdown and JSON in --out.

    pip install --no-deps -e . && python benchmarks/gpu_check.py --out OUT
    python benchmarks/gpu_check.py --out /tmp/check --dry-run   # no GPU: every non-CUDA path, then exit 0

Exit code: 0 when everything that ran passed (targets are reported, not enforced), 1 on a parity failure, a
failed backend or failed tests, 2 without a CUDA device (unless --dry-run). Nothing is installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also runs from a plain checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fuse_export.compare.bench import batch_of, eval_inputs, run_all  # noqa: E402
from fuse_export.compare.gpu_timing import TIMING_MODES, measure_cuda  # noqa: E402
from fuse_export.compare.parity import compare_outputs  # noqa: E402
from fuse_export.compare.timing import measure  # noqa: E402
from fuse_export.contract import Preprocessing  # noqa: E402
from fuse_export.doctor import doctor_report, environment_lines  # noqa: E402
from fuse_export.errors import BackendUnavailable  # noqa: E402
from fuse_export.export.formats import FORMATS  # noqa: E402
from fuse_export.export.manifest import read_manifest, tool_versions  # noqa: E402
from fuse_export.runners.cuda_base import cuda_status  # noqa: E402
from fuse_export.runners.registry import BACKENDS  # noqa: E402

TARGET_B1_MS, TARGET_B256_IPS = 0.30, 80_000
# Best first, so that a tight time budget cuts the least interesting rows.
ORDER = ["pytorch-compile-fp16", "pytorch-cuda-graph-fp16", "tensorrt-fp16-graph", "tensorrt-fp16", "pytorch-cuda",
         "pytorch-cuda-fp16", "pytorch-cuda-bf16", "onnxruntime-cuda-fp16", "onnxruntime-cuda", "onnxruntime-trt-fp16",
         "onnxruntime-trt", "tensorrt", "tensorrt-int8", "torchscript-cuda"]


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def iterations_for(batch: int, quick: bool = False) -> tuple[int, int]:
    """(warm-up, timed) calls: many for the launch-bound batch 1, fewer for the big batches (few on a CPU)."""
    if quick:
        return 2, 10
    timed = max(30, min(300, 3000 // batch))
    return max(10, timed // 5), timed


def start_tests(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda or tensorrt", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    log(f"tests: {' '.join(cmd[2:])} (in the background while the model is exported)")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(out / "pytest.log", "w"), stderr=subprocess.STDOUT)


def finish_tests(proc: subprocess.Popen, out: Path, timeout: float) -> dict[str, Any]:
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
        status = "passed" if rc in (0, 5) else "failed"  # 5: nothing collected/selected
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc, status = None, f"timed out after the {timeout:.0f} s left for it"
    lines = (out / "pytest.log").read_text(errors="replace").splitlines()
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "skipped" in ln
                                                                     or "failed" in ln or "error" in ln)), "")
    log(f"tests {status}: {summary.strip('= ')}")
    return {"status": status, "returncode": rc, "summary": summary.strip("= "), "log": "pytest.log",
            "tail": lines[-25:]}


def make_model(work: Path, image_size: int, seed: int = 0) -> tuple[Path, Preprocessing]:
    from fuse_export.model.fused import FusedFER, ModelConfig
    from fuse_export.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    pre = Preprocessing(image_size=image_size)
    model = FusedFER(ModelConfig(num_classes=pre.num_classes)).eval()
    ckpt = work / "fused-random-init.pt"
    save_checkpoint(ckpt, model, pre, {"name": "gpu-check", "note": f"seeded random init (seed {seed})"})
    return ckpt, pre


def export_all(ckpt: Path, folder: Path, trt_ok: bool) -> list[dict[str, Any]]:
    """Fresh exports; each step may fail alone (it is recorded, the rest goes on)."""
    from fuse_export.workflow import export_checkpoint

    steps = [("torchscript+onnx fp32", [FORMATS["torchscript"], FORMATS["onnx"]], ["fp32"]),
             ("onnx fp16", [FORMATS["onnx"]], ["fp16"])]
    if trt_ok:
        steps.append(("tensorrt fp32+fp16", [FORMATS["tensorrt"]], ["fp32", "fp16"]))
    done = []
    for name, formats, precisions in steps:
        t0 = time.perf_counter()
        try:
            export_checkpoint(ckpt, formats, folder, precisions=precisions)
            done.append({"step": name, "status": "ok", "seconds": round(time.perf_counter() - t0, 1)})
        except Exception as exc:  # noqa: BLE001 - one failed export must not hide the others' results
            done.append({"step": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
        log(f"export {name}: {done[-1]['status']} {done[-1].get('reason', '')}")
    return done


def artifact(manifest: dict[str, Any], fmt: str | None, precision: str) -> dict[str, Any] | None:
    return next((a for a in manifest["artifacts"] if a["format"] == fmt and a.get("precision", "fp32") == precision
                 and not a.get("embed_preprocessing")), None)


def timing_rows(runner, key: str, inputs: np.ndarray, sizes: list[int], mode: str, deadline: float,
                parity=None) -> list[dict[str, Any]]:
    rows = []
    for b in sizes:
        if time.perf_counter() > deadline:
            rows.append({"backend": key, "batch": b, "status": "skipped", "reason": "time budget used up"})
            continue
        warm, timed = iterations_for(b, quick=mode == "host")
        x = batch_of(inputs, b)
        if hasattr(runner, "run_device"):  # CudaRunner, or the baseline's ModuleRunner
            stats = measure_cuda(runner, x, warm, timed, mode)
        else:  # the CPU stand-ins of --dry-run
            name = runner.contract.input_names[0]
            stats = measure(lambda feed={name: x}: runner.infer(feed), warm, timed)
        rows.append({"backend": key, "batch": b, "status": "ok", "latency": stats.to_dict(),
                     "images_per_s": b / (stats.median_ms / 1e3), "parity": parity.to_dict() if parity else None})
        log(f"  {key} batch {b}: p50 {stats.median_ms:.3f} ms, p99 {stats.p99_ms:.3f} ms, "
            f"{rows[-1]['images_per_s']:,.0f} img/s")
    return rows


def bench_backend(key: str, folder: Path, manifest: dict[str, Any], ckpt: Path, pre: Preprocessing,
                  inputs: np.ndarray, reference: dict[str, np.ndarray], sizes: list[int], mode: str,
                  deadline: float) -> list[dict[str, Any]]:
    b = BACKENDS[key]
    ok, why = b.available()
    art = artifact(manifest, b.format, b.precision) if b.format else None
    if ok and b.format and art is None:
        ok, why = False, f"no {b.format} {b.precision} artifact was exported (see the export steps)"
    if not ok:
        log(f"{key}: skipped ({why})")
        return [{"backend": key, "batch": None, "status": "skipped", "reason": why}]
    if time.perf_counter() > deadline:
        return [{"backend": key, "batch": None, "status": "skipped", "reason": "time budget used up"}]
    log(f"{key}: loading, parity over {len(inputs)} images, timing at {sizes}")
    try:
        with b.factory(folder / art["file"] if art else None, ckpt, pre, None, False) as runner:
            outs = run_all(runner, inputs, batch=32)
            parity = compare_outputs(key, reference, outs, b.precision)
            log(f"  {parity.explain()}")
            rows = timing_rows(runner, key, inputs, sizes, mode, deadline, parity)
    except BackendUnavailable as exc:  # found out on loading (e.g. ORT fell back from its CUDA provider)
        log(f"{key}: skipped ({exc})")
        rows = [{"backend": key, "batch": None, "status": "skipped", "reason": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - record and go on with the next backend
        log(f"{key}: FAILED {type(exc).__name__}: {exc}")
        rows = [{"backend": key, "batch": None, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc().splitlines()[-12:]}]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


class ModuleRunner:
    """A bare nn.Module on CUDA with the `run_device` interface gpu_timing uses (for the ResNet-18 baseline)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.device = torch.device("cuda:0")
        self.module = module.eval().to(self.device)

    def run_device(self, x: torch.Tensor):
        with torch.no_grad():
            return (self.module(x),)


def baseline(inputs: np.ndarray, sizes: list[int], mode: str, deadline: float) -> list[dict[str, Any]]:
    import torchvision

    log("baseline: torchvision ResNet-18, eager fp32, torch's default settings")
    runner = ModuleRunner(torchvision.models.resnet18(weights=None))
    rows = timing_rows(runner, "resnet18-eager-fp32 (baseline)", inputs, sizes, mode, deadline)
    del runner
    torch.cuda.empty_cache()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fused = [r for r in rows if r["status"] == "ok" and r.get("parity") and r["parity"]["passed"]]
    b1 = min((r for r in fused if r["batch"] == 1), key=lambda r: r["latency"]["median_ms"], default=None)
    big = max((r for r in fused if r["batch"] == 256), key=lambda r: r["images_per_s"], default=None)
    return {
        "best_batch1": b1 and {"backend": b1["backend"], "median_ms": b1["latency"]["median_ms"],
                               "target_ms": TARGET_B1_MS, "met": b1["latency"]["median_ms"] <= TARGET_B1_MS},
        "best_batch256": big and {"backend": big["backend"], "images_per_s": big["images_per_s"],
                                  "target_images_per_s": TARGET_B256_IPS,
                                  "met": big["images_per_s"] >= TARGET_B256_IPS},
        "parity_failures": [r["backend"] for r in rows if r.get("parity") and not r["parity"]["passed"]],
        "failed": sorted({r["backend"] for r in rows if r["status"] == "failed"}),
        "skipped": {r["backend"]: r["reason"] for r in rows if r["status"] == "skipped" and r["batch"] is None},
    }


def markdown(doc: dict[str, Any]) -> str:
    env, s = doc["environment"], doc["summary"]
    gpu = ", ".join(f"{d['name']} (cc {d['compute_capability']}, {d['memory_gib']} GiB)"
                    for d in env["torch"].get("devices", [])) or "none"
    out = [f"## GPU check {doc['date']}", "",
           f"- GPU: {gpu}; NVIDIA driver {env['nvidia_driver'] or 'n/a'}",
           f"- {'; '.join(f'{k} {v}' for k, v in doc['versions'].items())}; CUDA (torch build) "
           f"{env['torch'].get('cuda_build')}, cuDNN {env['torch'].get('cudnn')}",
           f"- TensorRT: {env['tensorrt'].get('version') or env['tensorrt'].get('reason')}",
           f"- Model: {doc['model']}; parity: {doc['parity_inputs']} vs eager fp32 on the CPU",
           f"- Timing: {doc['timing']}", f"- Tests (`pytest -m \"cuda or tensorrt\"`): {doc['tests'].get('status')} "
           f"{doc['tests'].get('summary', '')}", f"- Mode: {'DRY RUN (no CUDA)' if doc['dry_run'] else 'GPU'}; "
           f"wall time {doc['wall_s']} s", "",
           "| Backend | Batch | p50 ms | p90 ms | p99 ms | images/s | max abs dprob | top-1 agree | parity |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        if r["status"] != "ok":
            continue
        lat, par = r["latency"], r.get("parity")
        out.append(f"| {r['backend']} | {r['batch']} | {lat['median_ms']:.3f} | {lat['p90_ms']:.3f} | "
                   f"{lat['p99_ms']:.3f} | {r['images_per_s']:,.0f} | "
                   + (f"{par['max_abs_prob']:.1e} | {par['top1_agreement']:.2%} | "
                      f"{'pass' if par['passed'] else 'FAIL'} |" if par else "- | - | baseline |"))
    out += ["", "Targets (best fused backend with parity):"]
    for key, label in (("best_batch1", "batch-1 latency <= 0.30 ms"), ("best_batch256", "batch-256 >= 80,000 img/s")):
        v = s[key]
        figure = "" if not v else (f"{v['median_ms']:.3f} ms" if "median_ms" in v
                                   else f"{v['images_per_s']:,.0f} img/s")
        out.append(f"- {label}: " + (f"{v['backend']} {figure} -> {'met' if v['met'] else 'NOT met'}" if v
                                     else "no fused backend with parity ran at this batch size"))
    if s["skipped"]:
        out += ["", "Not run here:"] + [f"- {k}: {why}" for k, why in s["skipped"].items()]
    if s["failed"] or s["parity_failures"]:
        out += ["", f"Failed: {', '.join(s['failed']) or '-'}; "
                    f"parity failures: {', '.join(s['parity_failures']) or '-'}"]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md, gpu_check.json, pytest.log")
    ap.add_argument("--dry-run", action="store_true", help="no CUDA needed: exercise every non-CUDA path")
    ap.add_argument("--timing", choices=list(TIMING_MODES), default="device")
    ap.add_argument("--batch-sizes", default=None, help="default 1,32,256 (1,8 with --dry-run)")
    ap.add_argument("--image-size", type=int, default=None, help="default 224 (64 with --dry-run)")
    ap.add_argument("--parity-images", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=420, help="start no new work after this (the cap is 8 min)")
    ap.add_argument("--tests-timeout", type=float, default=200)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    out = args.out.resolve()
    (out / "work").mkdir(parents=True, exist_ok=True)
    report = doctor_report()
    for line in environment_lines(report["environment"]):
        log(line)
    cuda_ok, cuda_why = cuda_status()
    trt_ok = BACKENDS["tensorrt"].available()[0]
    if not report["environment"]["tensorrt"]["usable"]:
        log(f"TensorRT is not usable here: {report['environment']['tensorrt']['reason']}; the native TensorRT and "
            "ORT TensorRT-EP backends are skipped, everything else is measured")
    if not cuda_ok and not args.dry_run:
        log(f"{cuda_why}: this check needs a CUDA GPU (use --dry-run to exercise the CPU paths)")
        return 2
    dry = not cuda_ok
    sizes = [int(v) for v in (args.batch_sizes or ("1,8" if dry else "1,32,256")).split(",")]
    image_size = args.image_size or (64 if dry else 224)
    n_parity = min(args.parity_images, 64) if dry else args.parity_images

    tests_started = time.perf_counter()
    tests = start_tests(out) if not args.skip_tests else None
    ckpt, pre = make_model(out / "work", image_size)
    folder = out / "work" / "export"
    exports = export_all(ckpt, folder, trt_ok)
    manifest = read_manifest(folder) if (folder / "manifest.json").is_file() else {"artifacts": []}
    tests_result = {"status": "not run (--skip-tests)"}
    if tests is not None:  # finish the tests before timing anything on the GPU
        left = min(args.tests_timeout - (time.perf_counter() - tests_started), deadline - time.perf_counter())
        tests_result = finish_tests(tests, out, left)

    inputs = eval_inputs(pre, None, n_parity)
    with BACKENDS["pytorch"].factory(None, ckpt, pre, None, False) as ref_runner:
        reference = run_all(ref_runner, inputs.float_nchw, batch=32)
    rows: list[dict[str, Any]] = []
    if cuda_ok:
        rows += baseline(inputs.float_nchw, sizes, args.timing, deadline)
    keys = ORDER + [k for k, b in BACKENDS.items() if b.device == "cuda" and k not in ORDER]
    for key in keys:
        rows += bench_backend(key, folder, manifest, ckpt, pre, inputs.float_nchw, reference, sizes, args.timing,
                              deadline)
    if dry:  # exercise parity + timing + report on the CPU with the CPU backends
        for key in ("pytorch", "onnxruntime"):
            b = BACKENDS[key]
            art = artifact(manifest, b.format, b.precision) if b.format else None
            with b.factory(folder / art["file"] if art else None, ckpt, pre, None, False) as runner:
                parity = compare_outputs(key, reference, run_all(runner, inputs.float_nchw, batch=32), "fp32")
                rows += timing_rows(runner, f"{key} (CPU, dry run)", inputs.float_nchw, sizes, "host", deadline,
                                    parity)
    summary = summarize(rows)
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": dry,
        "environment": report["environment"],
        "versions": {k: v for k, v in tool_versions().items() if k in ("torch", "torchvision", "onnxruntime",
                                                                      "onnxruntime-gpu", "onnx", "tensorrt")},
        "model": f"fused DCNN+SCN, seeded random init, {image_size}x{image_size} input, {pre.num_classes} classes",
        "parity_inputs": f"{n_parity} seeded random images",
        "timing": TIMING_MODES[args.timing] if cuda_ok else "host wall clock (dry run: no CUDA)",
        "timing_mode": args.timing if cuda_ok else "host",
        "batch_sizes": sizes, "exports": exports, "tests": tests_result, "rows": rows, "summary": summary,
        "backends_here": report["backends"], "wall_s": round(time.perf_counter() - t_start, 1),
    }
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(doc))
    log(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'} in {doc['wall_s']} s")
    if dry:
        log("DRY RUN: skipped (no CUDA device): " + ", ".join(summary["skipped"]) + "; the ResNet-18 baseline; "
            "CUDA timing. Ran: doctor, model + fresh exports, CPU parity/timing, GPU-marked tests (skipped), report")
    bad = summary["failed"] or summary["parity_failures"] or tests_result["status"] not in (
        "passed", "not run (--skip-tests)") or any(e["status"] != "ok" for e in exports)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
