"""What each subprocess of the GPU check runs: `python benchmarks/gpu_check.py --job SPEC.json`.

A job reads its spec, does one thing (prepare the model; build TensorRT engines; time one backend with parity
at every timed batch size; time the plain ResNet-18 baseline), appends its rows to `spec["rows_file"]` and,
between stages, writes what it has so far to `spec["state_file"]`, so that a crash still leaves the parent
the figures measured before it. A Python exception becomes a failed row; anything worse (a signal, a hang)
is the parent's to record.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Emit = Callable[[list[dict[str, Any]]], None]
ROOT = Path(__file__).resolve().parents[2]


class State:
    """The job's progress, rewritten atomically after each stage."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- prepare: a model whose outputs are decided

def prepare(spec: dict[str, Any], emit: Emit, state: State) -> None:
    """Generated faces -> a short seeded training on the device -> parity inputs and the eager fp32 reference
    on the CPU -> the exports the selected backends need. Parity is only meaningful on a decided model: a
    random init gives near-uniform probabilities, whose top-1 flips under any rounding."""
    import torch

    from fuse_export.compare.bench import batch_of, eval_inputs, run_all
    from fuse_export.compare.parity import TOLERANCES
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.runners.registry import BACKENDS
    from fuse_export.training.checkpoint import load_model
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training
    from fuse_export.app.export_verify import export_checkpoint

    work, seed = Path(spec["work"]), int(spec["seed"])
    t0 = time.perf_counter()
    csv = work / "data" / "faces.csv"
    counts = write_fer2013_csv(csv, SyntheticSpec(samples_per_class=spec["faces_per_class"], seed=seed))
    recipe = load_recipe(ROOT / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": spec["image_size"]},
        train={"epochs": spec["epochs"], "batch_size": spec["train_batch"], "seed": seed,
               "num_workers": spec["loader_workers"], "amp": spec["amp"]})
    t_train = time.perf_counter()
    result = run_training(recipe, str(csv), work / "train", device=spec["device"], progress=False)
    train = {"faces": counts, "epochs": spec["epochs"], "image_size": spec["image_size"], "device": spec["device"],
             "amp": spec["amp"], "batch": spec["train_batch"], "seed": seed,
             "seconds": round(time.perf_counter() - t_train, 1), "test_accuracy": result.test_accuracy}
    state.update(train=train)
    if torch.cuda.is_available():  # the training's memory back before the reference and exports
        torch.cuda.empty_cache()

    loaded = load_model(result.best)
    pre = loaded.preprocessing
    n = int(spec["parity_images"])
    faces = eval_inputs(pre, str(csv), limit=n)  # the held-out faces through the eval transform
    x = batch_of(faces.float_nchw, n)  # tiled when the split has fewer
    with BACKENDS["pytorch"].factory(None, result.best, pre, None, False) as ref:
        reference = run_all(ref, x, batch=32)
    np.savez(work / "parity.npz", x=x, **{f"ref_{k}": v for k, v in reference.items()})
    p = np.sort(reference["probabilities"], axis=1)
    gap = p[:, -1] - p[:, -2]
    bound = TOLERANCES["fp16"][0]
    decided = {"bound": bound, "count": int((gap > bound).sum()), "of": int(len(gap)),
               "fraction": float((gap > bound).mean()), "min_gap": float(gap.min()),
               "median_gap": float(np.median(gap)), "required_fraction": 0.9}
    decided["met"] = decided["fraction"] >= decided["required_fraction"]
    parity_inputs = {"count": n, "distinct": int(len(faces.float_nchw)), "source": faces.source,
                     "reference": "eager fp32 on the CPU (`pytorch` backend)"}
    state.update(decided=decided, parity_inputs=parity_inputs)

    exports = []
    folder = work / "export"
    for fmt, precision in spec["exports"]:
        t = time.perf_counter()
        try:
            export_checkpoint(result.best, [FORMATS[fmt]], folder, precisions=[precision])
            exports.append({"step": f"{fmt} {precision}", "status": "ok", "seconds": round(time.perf_counter() - t, 1)})
        except Exception as exc:  # noqa: BLE001 - one failed export skips its backends, not the run
            exports.append({"step": f"{fmt} {precision}", "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
        state.update(exports=exports)
    emit([{"kind": "prepare", "status": "ok", "checkpoint": str(result.best), "preprocessing": pre.to_dict(),
           "train": train, "parity_inputs": parity_inputs, "decided": decided, "exports": exports,
           "export_folder": str(folder), "seconds": round(time.perf_counter() - t0, 1)}])


def build_tensorrt(spec: dict[str, Any], emit: Emit, state: State) -> None:
    """ONNX fp32 + fp16 and TensorRT engines of both (the engines are built from this call's verified ONNX)."""
    from fuse_export.exporters.formats import FORMATS
    from fuse_export.app.export_verify import export_checkpoint

    t = time.perf_counter()
    export_checkpoint(spec["checkpoint"], [FORMATS["tensorrt"]], spec["export_folder"], precisions=["fp32", "fp16"])
    emit([{"kind": "export", "step": "tensorrt fp32+fp16 (with ONNX fp32+fp16)", "status": "ok",
           "seconds": round(time.perf_counter() - t, 1)}])


# ---------------------------------------------------------------- timing with parity at the timed shapes

def outputs_at_batch(runner, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Outputs over all of `x` in calls of exactly `batch` inputs (the last one padded), so a CUDA graph or a
    compiled graph is checked at the very shape it is timed at."""
    from fuse_export.compare.bench import batch_of

    name = runner.contract.input_names[0]
    parts = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        feed = chunk if len(chunk) == batch else batch_of(np.concatenate([chunk, x[:batch]]), batch)
        parts.append({k: v[:len(chunk)] for k, v in runner.infer({name: feed}).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _fault(kind: str | None, work: Path) -> None:
    """Test hook (--inject-fault, dry run only): die like a segfaulting backend, or hang with a child process
    (which the parent's process-group kill must take down too)."""
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        (work / "hang-child.pid").write_text(str(child.pid))
        time.sleep(3600)


def time_backend(spec: dict[str, Any], emit: Emit, state: State) -> None:
    """One backend: load, then per timed batch size the first call (compile / capture / autotune) and parity
    of every parity input at that batch size, then the interleaved timing of all batch sizes."""
    from fuse_export.compare.bench import batch_of
    from fuse_export.compare.gpu_timing import CudaSampler, Sampler, interleaved
    from fuse_export.compare.parity import compare_outputs
    from fuse_export.contract import Preprocessing
    from fuse_export.runners.cuda_base import CudaRunner
    from fuse_export.runners.registry import BACKENDS

    _fault(spec.get("fault"), Path(spec["work"]))
    b = BACKENDS[spec["backend"]]
    pre = Preprocessing.from_dict(spec["preprocessing"])
    data = np.load(spec["parity_file"])
    x = data["x"]
    reference = {k[4:]: data[k] for k in data.files if k.startswith("ref_")}
    artifact = Path(spec["artifact"]) if spec.get("artifact") else None
    runner = b.factory(artifact, Path(spec["checkpoint"]), pre, spec.get("threads"), False)
    t = time.perf_counter()
    with runner:
        load_s = round(time.perf_counter() - t, 2)
        cuda = isinstance(runner, CudaRunner)
        numerics = runner.numerics() if cuda else {"precision": b.precision, "mode": "CPU stand-in (dry run)"}
        state.update(load_s=load_s, numerics=numerics)
        name = runner.contract.input_names[0]
        first, parity, samplers = {}, {}, {}
        for size in spec["batch_sizes"]:
            xb = batch_of(x, size)
            t = time.perf_counter()
            runner.infer({name: xb})  # host in, host out: synchronized
            first[size] = round(time.perf_counter() - t, 3)
            parity[size] = compare_outputs(spec["label"], reference, outputs_at_batch(runner, x, size), b.precision)
            state.update(first_call_s=first, parity={k: v.to_dict() for k, v in parity.items()})
            samplers[size] = CudaSampler(runner, xb, spec["timing_mode"]) if cuda else \
                Sampler(lambda feed={name: xb}: runner.infer(feed))
        stats = interleaved(samplers, spec["repeats"], spec["min_calls"], spec["warmup"])
    emit([{"kind": "timing", "backend": spec["label"], "key": b.key, "title": b.title, "batch": size,
           "status": "ok", "precision": b.precision, "latency": stats[size].to_dict(),
           "images_per_s": size / (stats[size].median_ms / 1e3), "load_s": load_s, "first_call_s": first[size],
           "parity": parity[size].to_dict(), "numerics": numerics} for size in spec["batch_sizes"]])


def time_baseline(spec: dict[str, Any], emit: Emit, state: State) -> None:
    """The plain ResNet-18 variants, all batch sizes interleaved in one timing (no parity: another model)."""
    from benchmarks.gpu.baseline import VARIANTS, PlainResNet18Runner
    from fuse_export.compare.bench import batch_of
    from fuse_export.compare.gpu_timing import CudaSampler, interleaved
    from fuse_export.contract import Preprocessing

    pre = Preprocessing.from_dict(spec["preprocessing"])
    if spec.get("parity_file"):  # the same images as the fused rows (the values do not change the timing)
        x = np.load(spec["parity_file"])["x"]
    else:  # no model was prepared: any images of the right shape
        x = np.random.default_rng(0).standard_normal((1, 3, pre.image_size, pre.image_size)).astype(np.float32)

    runners, samplers, first, numerics = [], {}, {}, {}
    try:
        for label, precision, channels_last, mode in VARIANTS:
            r = PlainResNet18Runner(pre, precision=precision, channels_last=channels_last, mode=mode, label=label)
            runners.append(r.activate())
            numerics[label] = r.numerics()
            for size in spec["batch_sizes"]:
                t = time.perf_counter()
                samplers[(label, size)] = CudaSampler(r, batch_of(x, size), spec["timing_mode"])
                samplers[(label, size)].run(1)
                first[(label, size)] = round(time.perf_counter() - t, 3)
        stats = interleaved(samplers, spec["repeats"], spec["min_calls"], spec["warmup"])
    finally:
        for r in reversed(runners):  # each restores the numerics settings it found
            r.deactivate()
    emit([{"kind": "timing", "backend": label, "key": "resnet18-baseline", "title": label, "batch": size,
           "status": "ok", "baseline": True, "precision": numerics[label]["precision"],
           "latency": s.to_dict(), "images_per_s": size / (s.median_ms / 1e3), "first_call_s": first[(label, size)],
           "parity": None, "numerics": numerics[label]} for (label, size), s in stats.items()])


JOBS: dict[str, Callable[[dict[str, Any], Emit, State], None]] = {
    "prepare": prepare, "build-tensorrt": build_tensorrt, "backend": time_backend, "baseline": time_baseline}


def job_main(spec_path: Path) -> int:
    """Entry point of a job subprocess; exit 0 whenever the rows say what happened."""
    from fuse_export.compare.isolated import append_jsonl

    faulthandler.enable()  # a segfault in native code prints the Python stack into the job's log
    spec = json.loads(Path(spec_path).read_text())
    rows_file = Path(spec["rows_file"])

    def emit(rows: list[dict[str, Any]]) -> None:
        append_jsonl(rows_file, rows)

    state = State(Path(spec["state_file"]))
    try:
        JOBS[spec["kind"]](spec, emit, state)
    except Exception as exc:  # noqa: BLE001 - the row carries the error; the parent goes on
        from fuse_export.errors import BackendUnavailable

        status = "skipped" if isinstance(exc, BackendUnavailable) else "failed"  # found out on loading
        emit([{"kind": spec.get("row_kind", spec["kind"]), "backend": spec.get("label"), "batch": None,
               "status": status, "reason": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc().splitlines()[-15:], "partial": state.data}])
    return 0
