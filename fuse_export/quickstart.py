"""The main job: synthetic faces -> train -> export (TorchScript, ONNX) -> bench with parity, on CPU."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_export.compare.bench import BenchReport, run_bench
from fuse_export.compare.report import bench_json
from fuse_export.data.synthetic import SyntheticSpec, write_fer2013_csv
from fuse_export.export.formats import FORMATS
from fuse_export.fileio import write_json
from fuse_export.progress import console
from fuse_export.runners.registry import parse_backends
from fuse_export.train.recipe import load_recipe
from fuse_export.train.trainer import TrainResult, run_training
from fuse_export.workflow import ExportResult, export_checkpoint, resolve_recipe

QUICK_RECIPE = "synthetic-quick"
# The formats the quickstart exports, and the eager reference.
QUICK_BACKENDS = "pytorch,torchscript,onnxruntime"


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
    trained = run_training(recipe, str(csv_path), out / "train", device="cpu", progress=progress)

    console.rule("3/4 export TorchScript and ONNX (each verified against eager)")
    exported = export_checkpoint(trained.best, [FORMATS["torchscript"], FORMATS["onnx"]], out / "export")

    console.rule("4/4 benchmark and parity on the evaluation split")
    report = run_bench(out / "export", parse_backends(QUICK_BACKENDS), list(batch_sizes), warmup=3, iterations=20,
                       data=str(csv_path), progress=progress)
    json_path = out / "bench.json"
    write_json(json_path, bench_json(report, {"batch_sizes": list(batch_sizes), "warmup": 3, "iterations": 20}))
    return QuickstartResult(csv_path, trained, exported, report, json_path)
