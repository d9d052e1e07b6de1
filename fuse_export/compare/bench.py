"""The cross-backend benchmark: latency, throughput, parity against a reference and accuracy, per backend and batch.

Two phases. First every backend evaluates the same inputs once (parity against the eager reference, or a
saved reference file, and accuracy when labels are known). Then the timing: all (backend, batch) rows take
turns in interleaved rounds, each row measured for at least a minimum time and a minimum number of calls
(compare/timing.py), so load from elsewhere on the machine hits every row alike.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.compare.feed import (EvalInputs, batch_of, data_format_for, eval_inputs,  # noqa: F401 (re-exported)
                                      make_runner, run_all)
from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.compare.reference import REFERENCE_FILE, ReferenceSet, load_reference, save_reference
from fuse_export.compare.timing import LatencyStats, Schedule, interleaved_adaptive
from fuse_export.contract import Preprocessing
from fuse_export.errors import UserError
from fuse_export.exporters.manifest import MANIFEST
from fuse_export.exporters.manifest_read import read_manifest, verify_checkpoint
from fuse_export.exporters.options import check_tolerances
from fuse_export.runners.base import Runner
from fuse_export.runners.cuda_base import CudaRunner, check_device
from fuse_export.runners.registry import BACKENDS, REFERENCE, Backend, parse_backends

MAX_MIN_TIME_S = 3600.0  # --min-time per row: an hour is already more than any bench needs

@dataclass(frozen=True)
class BenchOptions:
    """Everything `bench` can be told; the CLI builds one from its flags."""

    backends: tuple[str, ...] | None = None  # keys; None: every CPU backend (+ CUDA ones where usable)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup: int = 5  # untimed calls per row per round
    iterations: int = 30  # minimum timed calls per row (over all rounds)
    min_time_s: float = 1.0  # minimum timed seconds per row (over all rounds): the adaptive iteration count
    rounds: int = 3  # interleaved rounds across all rows
    threads: int | None = None
    data: str | None = None  # a data set (any supported format): parity and accuracy on its test split
    data_format: str | None = None  # default: fer2013-csv for a .csv, image-folder for a folder
    eval_limit: int | None = None
    checkpoint: str | None = None  # eager reference (default: the manifest's)
    reference: str | None = None  # a saved reference (.npz, or a folder holding reference.npz) instead of eager
    save_results: str | None = None  # write the inputs and reference outputs here
    atol: float | None = None
    rtol: float | None = None
    device: str | None = None  # cpu | cuda | cuda:N: which device the CUDA backends run on (and which run)
    verify: bool = True  # check every artifact against its manifest sha256 before running it (--no-verify)

    def __post_init__(self) -> None:
        check_tolerances(self.atol, self.rtol)
        t = self.min_time_s
        if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 <= t <= MAX_MIN_TIME_S):
            raise UserError(f"--min-time {t}: must be a finite number of seconds in 0..{MAX_MIN_TIME_S:g} (the "
                            "minimum timed time per row)")

    def schedule(self) -> Schedule:
        return Schedule(self.warmup, self.iterations, self.min_time_s, self.rounds)


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
            "latency": self.latency.to_dict() if self.latency is not None else None, "images_per_s": self.images_per_s,
            "parity": self.parity.to_dict() if self.parity is not None else None, "accuracy": self.accuracy,
        }


@dataclass
class BenchReport:
    """What `bench` measured (the public API's BenchResult): rows per backend and batch size."""

    folder: str
    inputs: str
    threads: int | None
    rows: list[BenchRow] = field(default_factory=list)
    reference: str = "pytorch (eager fp32, from the checkpoint)"

    def failures(self) -> list[BenchRow]:
        return [r for r in self.rows if r.status == "failed" or (r.parity is not None and not r.parity)]

    @property
    def passed(self) -> bool:
        return not self.failures()


BenchResult = BenchReport


def _artifact_for(manifest: dict[str, Any], backend: Backend, embed: bool) -> dict[str, Any] | None:
    for a in manifest["artifacts"]:
        # By format, not backend key: one model.onnx serves the CPU, CUDA and TensorRT execution providers.
        if a.get("format") == backend.format and a.get("precision", "fp32") == backend.runs_precision \
                and bool(a.get("embed_preprocessing")) == embed:
            return a
    return None


def _check_file(folder: Path, artifact: dict[str, Any]) -> tuple[bool, str]:
    """The manifest's file must exist and still have the recorded hash."""
    from fuse_export.fileio import sha256_file

    # An artifact may span files (an OpenVINO IR's .xml and its .bin): each listed one must match.
    for entry in [artifact, *artifact.get("companions", [])]:
        path = folder / entry["file"]
        if not path.is_file():
            return False, f"{path} is listed in manifest.json but missing; re-export it"
        if sha256_file(path) != entry.get("sha256"):
            return False, f"{path} differs from its manifest sha256; re-export it"
    return True, ""


def _reference_path(folder: Path, manifest: dict[str, Any], given: str | None, ckpt: Path,
                    eager: bool = True) -> Path | None:
    """The saved reference to compare against: --reference (a file, or a folder with reference.npz), else the
    export's own reference.npz when the eager reference cannot run (the checkpoint is not here) or is not asked
    for (`eager` False: --backends leaves pytorch out); None: run the eager reference."""
    if given:
        p = Path(given)
        return p / REFERENCE_FILE if p.is_dir() else p
    listed = manifest.get("reference", {})
    if (not ckpt.is_file() or not eager) and listed.get("file") and (folder / listed["file"]).is_file():
        from fuse_export.errors import IntegrityError
        from fuse_export.fileio import is_inside, sha256_file

        path = folder / listed["file"]
        if not is_inside(path, folder) or sha256_file(path) != listed.get("sha256"):
            raise IntegrityError(f"{path}: differs from the sha256 in {folder / 'manifest.json'} (or lies outside "
                                 "the folder); re-export, or pass --reference FILE")
        return path
    return None


def _default_backends(device: str | None) -> list[Backend]:
    if device is None:
        return parse_backends(None)
    on = "cpu" if device == "cpu" else "cuda"
    return [BACKENDS[REFERENCE]] + [b for b in BACKENDS.values() if b.device == on and b.key != REFERENCE]


def benchmark(folder: str | os.PathLike, options: BenchOptions | None = None, progress: bool = True) -> BenchReport:
    """Benchmark every requested backend on the export folder's artifacts (see the module docstring)."""
    from fuse_export.progress import progress_bar

    opts = options or BenchOptions()
    folder = Path(folder)
    check_device(opts.device)  # cuda:7 without that GPU: refused, not benchmarked on the CPU instead
    manifest = read_manifest(folder, verify=opts.verify)
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    ckpt = Path(opts.checkpoint or manifest["source_checkpoint"]["path"])
    backends = parse_backends(",".join(opts.backends)) if opts.backends else _default_backends(opts.device)
    if opts.verify and opts.checkpoint is None and ckpt.is_file() and any(b.format is None for b in backends):
        verify_checkpoint(manifest, folder / MANIFEST)  # the eager rows run it in the export's name
    # Without pytorch among the backends (and without --data, whose inputs only eager can answer), parity is
    # against the export's own reference.npz, as when the checkpoint is gone.
    eager = opts.data is not None or any(b.key == REFERENCE for b in backends)
    ref_path = _reference_path(folder, manifest, opts.reference, ckpt, eager)
    saved: ReferenceSet | None = None
    if ref_path is not None:
        saved = load_reference(ref_path, pre)
        if opts.data:
            raise UserError("--data and --reference both name the inputs; give one (the reference holds its own)")
        inputs = EvalInputs(saved.float_nchw, saved.uint8_nhwc, saved.labels, saved.source)
        ref_title = f"{saved.backend} outputs saved in {ref_path}"
    else:
        if not ckpt.is_file():
            raise UserError(f"{folder / 'manifest.json'}: source checkpoint {ckpt} not found (the eager reference); "
                            "pass --checkpoint PATH, or --reference FILE (a saved reference.npz)")
        if not backends or backends[0].key != REFERENCE:
            backends = sorted(backends, key=lambda b: b.key != REFERENCE)  # the reference runs first
        if not backends or backends[0].key != REFERENCE:
            raise UserError("--backends must include pytorch (the eager reference for parity), or pass --reference")
        inputs = eval_inputs(pre, opts.data, opts.eval_limit, fmt=opts.data_format)
        ref_title = "pytorch (eager fp32, from the checkpoint)"
    report = BenchReport(str(folder), inputs.source, opts.threads, reference=ref_title)
    reference = saved.outputs if saved is not None else None
    sizes = list(opts.batch_sizes)
    timed: list[tuple[BenchRow, Runner, np.ndarray]] = []  # rows to time, with their runner and batch
    with contextlib.ExitStack() as stack, progress_bar(progress) as bar:
        # Each backend on the float-input artifact, then (when exported) on the uint8-input one, fed raw pixels.
        jobs = [(b, embed) for b in backends for embed in (False, True)
                if not embed or (b.format is not None and _artifact_for(manifest, b, True) is not None)]
        task = bar.add_task("bench", total=len(jobs), info="")
        for backend, embed in jobs:
            title = backend.title + (" uint8-in" if embed else "")
            feed = inputs.uint8_nhwc if embed else inputs.float_nchw
            ok, why = backend.available()
            artifact = None if backend.format is None else _artifact_for(manifest, backend, embed)
            if ok and backend.format is not None and artifact is None:
                flag = "" if backend.runs_precision == "fp32" else f" --precision {backend.runs_precision}"
                ok, why = False, (f"no {backend.format} {backend.runs_precision} artifact in {folder}; export it "
                                  f"with --format {backend.format}{flag}")
            if ok and backend.format is None and not ckpt.is_file():
                ok, why = False, f"checkpoint {ckpt} not here; parity is against the saved reference"
            file = artifact["file"] if artifact else None
            if ok and artifact is not None:
                ok, why = _check_file(folder, artifact)
            size_bytes = (artifact["size_bytes"] + sum(c.get("size_bytes", 0) for c in artifact.get("companions", []))
                          if artifact else (ckpt.stat().st_size if ckpt.is_file() else 0))
            size = round(size_bytes / 1e6, 2)
            bar.update(task, info=f"{backend.key}: evaluating")
            if not ok:
                report.rows.append(BenchRow(backend.key, title, file, "skipped", why, backend.precision, size))
                bar.advance(task)
                continue
            runner = make_runner(backend, folder / file if file else None, ckpt, pre, opts.threads, embed, opts.device)
            try:
                stack.enter_context(runner)
                outs = run_all(runner, feed)
                if reference is None:
                    reference = outs
                parity = compare_outputs(backend.key, reference, outs, backend.precision, opts.atol, opts.rtol)
                acc = None if inputs.labels is None else \
                    float((outs["probabilities"].argmax(1) == inputs.labels).mean())
            except UserError as exc:
                report.rows.append(BenchRow(backend.key, title, file, "failed", str(exc), backend.precision, size))
                bar.advance(task)
                continue
            for b in sizes:
                row = BenchRow(backend.key, title, file, "ok", "", backend.precision, size, b, parity=parity,
                               accuracy=acc)
                report.rows.append(row)
                timed.append((row, runner, batch_of(feed, b)))
            bar.advance(task)
        if opts.save_results and reference is not None:
            save_reference(opts.save_results, ReferenceSet(
                inputs.float_nchw, inputs.uint8_nhwc, inputs.labels, reference, inputs.source,
                saved.backend if saved is not None else REFERENCE, pre.to_dict(),
                manifest["source_checkpoint"].get("sha256")))
        _time_rows(timed, opts.schedule(), bar)
    return report


def _time_rows(timed: list[tuple[BenchRow, Runner, np.ndarray]], schedule: Schedule, bar: Any) -> None:
    """Fill in latency and throughput of every row, all rows interleaved."""
    from fuse_export.compare.gpu_timing import CudaSampler, Sampler

    samplers = {}
    for i, (row, runner, x) in enumerate(timed):
        if isinstance(runner, CudaRunner):  # CUDA events, H2D/D2H from pinned memory included
            samplers[i] = CudaSampler(runner, x, "end-to-end")
        else:
            name = runner.contract.input_names[0]
            samplers[i] = Sampler(lambda r=runner, n=name, x=x: r.infer({n: x}))
    task = bar.add_task("timing", total=schedule.rounds * len(samplers), info="")

    def on_round(r: int, i: int) -> None:
        bar.update(task, info=f"round {r + 1}/{schedule.rounds}: {timed[i][0].backend} batch {timed[i][0].batch}")
        bar.advance(task)

    for i, stats in interleaved_adaptive(samplers, schedule, on_round).items():
        row = timed[i][0]
        row.latency, row.images_per_s = stats, (row.batch or 1) / (stats.median_ms / 1e3)


def run_bench(folder: str | os.PathLike, backends: list[Backend], batch_sizes: list[int], warmup: int = 5,
              iterations: int = 30, threads: int | None = None, data: str | None = None,
              checkpoint: str | None = None, eval_limit: int | None = None, progress: bool = True,
              min_time_s: float = 0.0, rounds: int = 1, **fields: Any) -> BenchReport:
    """`benchmark` with loose arguments (kept for scripts written before BenchOptions): a fixed iteration
    count in one round unless `min_time_s` / `rounds` say otherwise; `fields` are further BenchOptions."""
    opts = BenchOptions(tuple(b.key for b in backends), tuple(batch_sizes), warmup, iterations, min_time_s, rounds,
                        threads, data, checkpoint=checkpoint, eval_limit=eval_limit, **fields)
    return benchmark(folder, opts, progress)
