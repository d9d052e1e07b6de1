"""The cross-backend benchmark: latency, throughput, parity against eager and accuracy, per backend and batch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.compare.gpu_timing import measure_cuda
from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.compare.timing import LatencyStats, measure
from fuse_export.contract import Preprocessing
from fuse_export.errors import UserError
from fuse_export.export.manifest import read_manifest
from fuse_export.runners.base import Runner
from fuse_export.runners.cuda_base import CudaRunner
from fuse_export.runners.registry import REFERENCE, Backend


@dataclass
class EvalInputs:
    """What every backend is fed: the same images, float NCHW and (for embedded graphs) uint8 NHWC."""

    float_nchw: np.ndarray
    uint8_nhwc: np.ndarray
    labels: np.ndarray | None  # None when the inputs are random (no data given)
    source: str


def eval_inputs(pre: Preprocessing, data: str | None, limit: int | None = None, seed: int = 0,
                fmt: str = "fer2013-csv") -> EvalInputs:
    """The data's evaluation split through the eval transform, or seeded random images without data."""
    from fuse_export.data.registry import load_dataset
    from fuse_export.data.transforms import eval_pixels_transform, normalize_pixels

    if data:
        ds = load_dataset(fmt, data)
        split = ds.splits["test"]
        if list(ds.class_names) != list(pre.class_names):
            raise UserError(f"--data {data}: class names {list(ds.class_names)} differ from the model's "
                            f"{list(pre.class_names)}")
        n = len(split) if limit is None else min(limit, len(split))
        tf = eval_pixels_transform(pre)
        pixels = np.stack([tf(split.load(i)).numpy() for i in range(n)])  # uint8 [N, 3, H, W]
        labels: np.ndarray | None = split.labels[:n]
        source = f"{data} (test split, {n} images)"
    else:
        rng = np.random.default_rng(seed)
        n = limit or 64
        pixels = rng.integers(0, 256, size=(n, 3, pre.image_size, pre.image_size), dtype=np.uint8)
        labels, source = None, f"{n} random images (seed {seed})"
    nhwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    return EvalInputs(normalize_pixels(nhwc, pre), nhwc, labels, source)


def run_all(runner: Runner, inputs: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """Outputs over all inputs in chunks, concatenated."""
    name = runner.contract.input_names[0]
    parts = [runner.infer({name: inputs[i:i + batch]}) for i in range(0, len(inputs), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in runner.contract.output_names}


def batch_of(inputs: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:size])


@dataclass
class BenchRow:
    backend: str
    title: str
    file: str | None
    status: str  # ok | skipped | failed
    reason: str = ""
    precision: str = "fp32"
    size_mb: float | None = None
    batch: int | None = None
    latency: LatencyStats | None = None
    images_per_s: float | None = None
    parity: ParityResult | None = None
    accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "title": self.title, "file": self.file, "status": self.status,
            "reason": self.reason, "precision": self.precision, "size_mb": self.size_mb, "batch": self.batch,
            "latency": self.latency.to_dict() if self.latency else None, "images_per_s": self.images_per_s,
            "parity": self.parity.to_dict() if self.parity else None, "accuracy": self.accuracy,
        }


@dataclass
class BenchReport:
    folder: str
    inputs: str
    threads: int | None
    rows: list[BenchRow] = field(default_factory=list)

    def failures(self) -> list[BenchRow]:
        return [r for r in self.rows if r.status == "failed" or (r.parity is not None and not r.parity)]


def _artifact_for(manifest: dict[str, Any], backend: Backend, embed: bool) -> dict[str, Any] | None:
    for a in manifest["artifacts"]:
        # By format, not backend key: one model.onnx serves the CPU, CUDA and TensorRT execution providers.
        if a.get("format") == backend.format and a.get("precision", "fp32") == backend.precision \
                and bool(a.get("embed_preprocessing")) == embed:
            return a
    return None


def _check_file(folder: Path, artifact: dict[str, Any]) -> tuple[bool, str]:
    """The manifest's file must exist and still have the recorded hash."""
    from fuse_export.fileio import sha256_file

    path = folder / artifact["file"]
    if not path.is_file():
        return False, f"{path} is listed in manifest.json but missing; re-export it"
    if sha256_file(path) != artifact.get("sha256"):
        return False, f"{path} differs from its manifest sha256; re-export it"
    return True, ""


def run_bench(folder: str | os.PathLike, backends: list[Backend], batch_sizes: list[int], warmup: int = 5,
              iterations: int = 30, threads: int | None = None, data: str | None = None,
              checkpoint: str | None = None, eval_limit: int | None = None, progress: bool = True) -> BenchReport:
    """Benchmark every requested backend on the export folder's artifacts."""
    from fuse_export.progress import progress_bar

    folder = Path(folder)
    manifest = read_manifest(folder)
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    ckpt = Path(checkpoint or manifest["source_checkpoint"]["path"])
    if not ckpt.is_file():
        raise UserError(f"{folder / 'manifest.json'}: source checkpoint {ckpt} not found (the eager reference); "
                        "pass --checkpoint PATH")
    inputs = eval_inputs(pre, data, eval_limit)
    report = BenchReport(str(folder), inputs.source, threads)
    reference: dict[str, np.ndarray] | None = None
    ordered = sorted(backends, key=lambda b: b.key != REFERENCE)  # the reference runs first
    if ordered and ordered[0].key != REFERENCE:
        raise UserError("--backends must include pytorch (the eager reference for parity)")
    with progress_bar(progress) as bar:
        # Each backend on the float-input artifact, then (when exported) on the uint8-input one, fed raw pixels.
        jobs = [(b, embed) for b in ordered for embed in (False, True)
                if not embed or (b.format is not None and _artifact_for(manifest, b, True) is not None)]
        task = bar.add_task("bench", total=len(jobs) * len(batch_sizes), info="")
        for backend, embed in jobs:
            title = backend.title + (" uint8-in" if embed else "")
            feed = inputs.uint8_nhwc if embed else inputs.float_nchw
            ok, why = backend.available()
            artifact = None if backend.format is None else _artifact_for(manifest, backend, embed)
            if ok and backend.format is not None and artifact is None:
                flag = "" if backend.precision == "fp32" else f" --precision {backend.precision}"
                ok, why = False, (f"no {backend.format} {backend.precision} artifact in {folder}; export it with "
                                  f"--format {backend.format}{flag}")
            file = artifact["file"] if artifact else None
            if ok and artifact is not None:
                ok, why = _check_file(folder, artifact)
            size = round(artifact["size_bytes"] / 1e6, 2) if artifact else round(ckpt.stat().st_size / 1e6, 2)
            if not ok:
                report.rows.append(BenchRow(backend.key, title, file, "skipped", why, backend.precision, size))
                bar.advance(task, len(batch_sizes))
                continue
            path = folder / file if file else None
            runner = backend.factory(path, ckpt, pre, threads, embed)
            try:
                with runner:
                    bar.update(task, info=f"{backend.key}: evaluating")
                    outs = run_all(runner, feed)
                    if reference is None:
                        reference = outs
                    parity = compare_outputs(backend.key, reference, outs, backend.precision)
                    acc = None
                    if inputs.labels is not None:
                        acc = float((outs["probabilities"].argmax(1) == inputs.labels).mean())
                    name = runner.contract.input_names[0]
                    for b in batch_sizes:
                        bar.update(task, info=f"{backend.key}: batch {b}")
                        x = batch_of(feed, b)
                        if isinstance(runner, CudaRunner):  # CUDA events, H2D/D2H from pinned memory included
                            stats = measure_cuda(runner, x, warmup, iterations, "end-to-end")
                        else:
                            stats = measure(lambda: runner.infer({name: x}), warmup, iterations)
                        report.rows.append(BenchRow(backend.key, title, file, "ok", "", backend.precision,
                                                    size, b, stats, b / (stats.median_ms / 1e3), parity, acc))
                        bar.advance(task)
            except UserError as exc:
                report.rows.append(BenchRow(backend.key, title, file, "failed", str(exc), backend.precision, size))
                bar.advance(task, len(batch_sizes))
    return report
