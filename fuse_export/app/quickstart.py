"""The main job: synthetic faces -> train -> export (TorchScript, ONNX, and OpenVINO IR where installed) ->
bench with parity, on CPU."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_export.compare.bench import BenchOptions, BenchReport, benchmark
from fuse_export.compare.report import bench_json
from fuse_export.data.synthetic import SyntheticSpec
from fuse_export.data.synthetic_csv import write_fer2013_csv
from fuse_export.exporters.formats import FORMATS, Format
from fuse_export.fileio import write_json
from fuse_export.progress import console
from fuse_export.runners.registry import BACKENDS, parse_backends
from fuse_export.training.recipe import load_recipe
from fuse_export.training.trainer import TrainResult, run_training
from fuse_export.app.export_verify import ExportResult, export_checkpoint
from fuse_export.training.recipe_path import resolve_recipe

QUICK_RECIPE = "synthetic-quick"
# The formats the quickstart always exports, and the eager reference.
QUICK_FORMATS = ("torchscript", "onnx")
QUICK_BACKENDS = "pytorch,torchscript,onnxruntime"


def quick_formats() -> list[Format]:
    """TorchScript and ONNX, plus every CPU format converted from them whose backend runs here (OpenVINO IR
    where openvino is installed): conversions cost seconds, and the user sees every runtime they have."""
    base = [FORMATS[k] for k in QUICK_FORMATS]
    extra = [f for f in FORMATS.values() if f.cpu and f.source in QUICK_FORMATS and BACKENDS[f.backend].available()[0]]
    return base + extra


def quick_backends(formats: list[Format]) -> list[str]:
    """The eager reference and the fp32 CPU backends of `formats` that can run here (reduced-precision backends,
    such as bf16, run on the same files with `bench --backends`, but a 2-epoch model is too undecided for them)."""
    keys = [b.key for b in parse_backends(QUICK_BACKENDS)]
    exported = {f.key for f in formats}
    keys += [b.key for b in BACKENDS.values() if b.key not in keys and b.device == "cpu" and b.format in exported
             and b.precision == "fp32" and b.available()[0]]
    return keys


@dataclass
class QuickstartResult:
    data: Path
    train: TrainResult
    export: ExportResult
    bench: BenchReport
    bench_json: Path


def run_quickstart(out: Path, epochs: int | None = None, samples_per_class: int = 600, image_size: int | None = None,
                   batch_sizes: tuple[int, ...] = (1, 8, 32), seed: int = 0, progress: bool = True) -> QuickstartResult:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "data" / "fer2013-synthetic.csv"
    # Only a folder an earlier quickstart wrote (its data file is there) has its training run replaced.
    earlier_quickstart = csv_path.is_file() and (out / "train" / "last.pt").exists()
    console.rule("1/4 synthetic faces")
    counts = write_fer2013_csv(csv_path, SyntheticSpec(samples_per_class=samples_per_class, seed=seed))
    console.print(f"wrote {csv_path} ({json.dumps(counts)})")

    console.rule("2/4 train the fused DCNN + SCN network")
    recipe = load_recipe(resolve_recipe(QUICK_RECIPE))
    changes: dict[str, dict[str, Any]] = {"train": {"seed": seed}}
    if epochs is not None:
        changes["train"]["epochs"] = epochs
    if image_size is not None:
        changes["data"] = {"image_size": image_size}
    recipe = recipe.replace(**changes)
    if earlier_quickstart:  # a quickstart run replaces its own previous one (and only that)
        console.print(f"replacing the previous quickstart run in {out / 'train'}")
        shutil.rmtree(out / "train")
    trained = run_training(recipe, str(csv_path), out / "train", device="cpu", progress=progress)

    formats = quick_formats()
    console.rule(f"3/4 export {', '.join(f.title for f in formats)} (each verified against eager)")
    exported = export_checkpoint(trained.best, formats, out / "export", force=True)

    console.rule("4/4 benchmark and parity on the evaluation split")
    # Rounds interleaved across backends, each row timed >= 0.5 s: a busy neighbour hits every row alike.
    opts = BenchOptions(tuple(quick_backends(formats)), tuple(batch_sizes), warmup=3,
                        iterations=20, min_time_s=0.5, rounds=3, data=str(csv_path))
    report = benchmark(out / "export", opts, progress=progress)
    json_path = out / "bench.json"
    write_json(json_path, bench_json(report, {"batch_sizes": list(batch_sizes), "warmup": 3, "iterations": 20,
                                              "min_time_s": 0.5, "rounds": 3}))
    return QuickstartResult(csv_path, trained, exported, report, json_path)
