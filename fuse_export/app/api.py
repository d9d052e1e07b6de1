"""The Python API for the model's life cycle: `train`, `export`, `bench` (inference: `fuse_export.load`).

    import fuse_export as fx
    run = fx.train("synthetic-quick", data="faces.csv", out="runs/train", epochs=3)
    manifest = fx.export(run.best, formats="torchscript,onnx", out="runs/export")
    result = fx.bench("runs/export", fx.BenchOptions(batch_sizes=(1, 8)))
    with fx.load("runs/export") as model:
        print(model.predict(["face.png"]).labels)

The CLI commands are thin shells over these functions: they parse flags into the option dataclasses
(ExportOptions, VerifyOptions, BenchOptions), call one function, and print its result. Errors a caller can
fix raise `fuse_export.errors.UserError`; an artifact that fails parity raises `ParityError` (exit code 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuse_export.compare.bench import BenchOptions, BenchResult
from fuse_export.exporters.options import ExportOptions, VerifyOptions

if TYPE_CHECKING:
    from fuse_export.compare.parity import ParityResult
    from fuse_export.training.recipe import Recipe
    from fuse_export.training.trainer import TrainResult


@dataclass
class Manifest:
    """An export folder's manifest.json, plus the parity results of the export call that wrote it."""

    folder: Path
    data: dict[str, Any]
    parity: dict[str, ParityResult] = field(default_factory=dict)  # file name -> result (this call's artifacts)

    @property
    def path(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self.data.get("artifacts", []))

    @property
    def reference(self) -> Path | None:
        """reference.npz (verification inputs + eager outputs), for `bench(..., reference=...)`."""
        entry = self.data.get("reference")
        return self.folder / entry["file"] if entry else None

    def file(self, format: str, precision: str = "fp32", embed_preprocessing: bool = False) -> Path:
        """The artifact of one format and precision; KeyError when the folder has none."""
        for a in self.artifacts:
            if a.get("format") == format and a.get("precision", "fp32") == precision \
                    and bool(a.get("embed_preprocessing")) == embed_preprocessing:
                return self.folder / a["file"]
        raise KeyError(f"no {format} {precision} artifact in {self.path}")

    @classmethod
    def read(cls, folder: str | os.PathLike, verify: bool = True) -> Manifest:
        """Read an export folder's manifest (with `verify`, every listed file is checked against its sha256)."""
        from fuse_export.exporters.manifest_read import read_manifest

        return cls(Path(folder), read_manifest(folder, verify=verify))


def _recipe(recipe: str | os.PathLike | Recipe) -> Recipe:
    from fuse_export.training.recipe import Recipe, load_recipe
    from fuse_export.training.recipe_path import resolve_recipe

    return recipe if isinstance(recipe, Recipe) else load_recipe(resolve_recipe(str(recipe)))


def train(recipe: str | os.PathLike | Recipe, data: str | os.PathLike | None = None,
          out: str | os.PathLike = "runs/train", *, epochs: int | None = None, seed: int | None = None,
          device: str = "auto", resume: bool = False, progress: bool = False,
          overrides: dict[str, dict[str, Any]] | None = None) -> TrainResult:
    """Train the fused network from a recipe (a name from recipes/, a TOML path, or a Recipe) on `data`.

    `overrides` change recipe fields by section, e.g. {"data": {"image_size": 64}, "train": {"batch_size": 32}};
    `device` is "auto", "cpu", "cuda" or "cuda:N". Returns the run (best/last checkpoint paths, test accuracy).
    """
    from fuse_export.exporters.options import parse_device
    from fuse_export.training.trainer import run_training

    r = _recipe(recipe)
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (overrides or {}).items()}
    if epochs is not None:
        sections.setdefault("train", {})["epochs"] = epochs
    if seed is not None:
        sections.setdefault("train", {})["seed"] = seed
    if sections:
        r = r.replace(**sections)
    dev = device if device == "auto" else (parse_device(device) or "auto")
    return run_training(r, None if data is None else str(data), out, device=dev, resume=resume, progress=progress)


def export(checkpoint: str | os.PathLike, formats: str | Sequence[str] = ("torchscript", "onnx"),
           precisions: str | Sequence[str] = ("fp32",), out: str | os.PathLike = "runs/export",
           options: ExportOptions | None = None, verify: VerifyOptions | None = None, *,
           force: bool = False) -> Manifest:
    """Export a checkpoint to each format and precision, verify every artifact against eager PyTorch, and
    write manifest.json and reference.npz into `out`.

    `formats` / `precisions`: names or a comma-separated string ("torchscript,onnx", "fp32,int8"); `options`
    and `verify` hold the rest (precisions given here win over `options.precisions`). Raises ParityError
    (exit code 1) when an artifact does not match; `verify.keep_failed` keeps it on disk as *.failed.*.
    """
    import dataclasses

    from fuse_export.exporters.formats import parse_formats, parse_precisions
    from fuse_export.app.export_verify import export_checkpoint

    fmt = parse_formats(formats if isinstance(formats, str) else ",".join(formats))
    precs = parse_precisions(precisions if isinstance(precisions, str) else ",".join(precisions))
    opts = dataclasses.replace(options or ExportOptions(), precisions=tuple(precs))
    result = export_checkpoint(checkpoint, fmt, out, opts, verify or VerifyOptions(), force=force)
    data = json.loads(result.manifest.read_text(encoding="utf-8"))
    return Manifest(Path(result.out_dir), data, dict(result.parity))


def bench(folder: str | os.PathLike, options: BenchOptions | None = None, *, progress: bool = False,
          **fields: Any) -> BenchResult:
    """Benchmark the export folder's artifacts: latency, throughput, parity and accuracy per backend and batch.

    `fields` are BenchOptions fields given one by one (e.g. `batch_sizes=(1, 8)`, `reference="ref.npz"`),
    applied over `options`. The result is truthy-testable through `.passed` and `.failures()`.
    """
    import dataclasses

    from fuse_export.compare.bench import benchmark

    opts = dataclasses.replace(options or BenchOptions(), **fields) if fields else (options or BenchOptions())
    return benchmark(folder, opts, progress)
