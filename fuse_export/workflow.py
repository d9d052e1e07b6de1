"""End-to-end workflows over the layers below: export-and-verify, and the quickstart pipeline."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.contract import io_contract
from fuse_export.errors import ExportError, RecipeError
from fuse_export.export.formats import Format, check_options
from fuse_export.export.manifest import artifact_entry, write_manifest
from fuse_export.export.metadata import artifact_metadata
from fuse_export.export.to_onnx import DEFAULT_OPSET, export_onnx
from fuse_export.export.to_torchscript import export_torchscript
from fuse_export.model.fused import ExportView
from fuse_export.progress import console
from fuse_export.runners.registry import BACKENDS
from fuse_export.train.checkpoint import load_model

VERIFY_SAMPLES = 16


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Path
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, ParityResult] = field(default_factory=dict)


def verification_batch(image_size: int, n: int = VERIFY_SAMPLES, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Seeded image-like inputs: uint8 NHWC pixels and the same normalized as float NCHW (ImageNet stats)."""
    from fuse_export.contract import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    return pixels, np.ascontiguousarray(x, dtype=np.float32)


def export_checkpoint(checkpoint: str | os.PathLike, formats: list[Format], out_dir: str | os.PathLike,
                      opset: int = DEFAULT_OPSET, static_batch: bool = False, batch: int = 1) -> ExportResult:
    """Export the checkpoint to each format, verify each against eager, then write manifest.json.

    A verification failure is an error: the artifact is removed and nothing is added to the manifest.
    """
    checkpoint = Path(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(checkpoint)
    pre = loaded.preprocessing
    given: dict[str, object] = {}
    if opset != DEFAULT_OPSET:
        given["opset"] = opset
    if static_batch:
        given["static_batch"] = True
    for fmt in formats:
        check_options(fmt, given)
    view = ExportView(loaded.model).eval()
    example_n = batch if static_batch else max(2, batch)
    _, verify_x = verification_batch(pre.image_size)
    example = torch.from_numpy(verify_x[:example_n].copy())
    if static_batch:
        verify_x = verify_x[:batch]
    with torch.inference_mode():
        ref_t = view(torch.from_numpy(verify_x))
    contract = io_contract(False)
    reference = {n: t.numpy() for n, t in zip(contract.output_names, ref_t)}
    meta = artifact_metadata(pre)
    result = ExportResult(out, out / "manifest.json")
    for fmt in formats:
        path = out / fmt.file_name
        console.print(f"exporting {fmt.title} -> {path}")
        extra: dict[str, Any] = {"static_batch": static_batch}
        if fmt.key == "torchscript":
            export_torchscript(view, example, path, meta)
        elif fmt.key == "onnx":
            export_onnx(view, example, path, contract, meta, opset=opset, static_batch=static_batch)
            extra["opset"] = opset
        backend = BACKENDS[fmt.backend]
        ok, why = backend.available()
        if not ok:
            path.unlink(missing_ok=True)
            raise ExportError(f"cannot verify {fmt.title}: {why}")
        with backend.factory(path, checkpoint, pre, None, False) as runner:
            got = runner.infer({contract.input_names[0]: verify_x})
        parity = compare_outputs(fmt.backend, reference, got, "fp32")
        console.print(f"  {parity.explain()}")
        if not parity:
            path.unlink(missing_ok=True)
            raise ExportError(f"{path}: exported {fmt.title} does not match eager PyTorch: {parity.explain()}; "
                              "the file was removed")
        result.parity[fmt.key] = parity
        result.artifacts.append(artifact_entry(out, fmt.file_name, fmt.key, fmt.backend, pre,
                                               verification=parity.to_dict(), **extra))
    write_manifest(out, checkpoint, pre, result.artifacts)
    return result


def recipe_search_path() -> list[Path]:
    """Where recipe names are looked up: ./recipes, the source checkout, then the installed data files."""
    here = Path(__file__).resolve().parent
    return [Path.cwd() / "recipes", here.parent / "recipes", Path(sys.prefix) / "share" / "fuse-export" / "recipes"]


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file path, or a bare name such as `synthetic-quick` found on the search path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        return p
    for folder in recipe_search_path():
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    raise RecipeError(f"recipe {name_or_path!r} not found in {', '.join(str(f) for f in recipe_search_path())}; "
                      "pass a path to a .toml file")
