"""End-to-end workflows over the layers below: export-and-verify, and the quickstart pipeline."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.compare.bench import run_all
from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.contract import Preprocessing, io_contract
from fuse_export.errors import BackendUnavailable, ExportError, RecipeError, UserError
from fuse_export.export.formats import FORMATS, Format, artifact_file, check_options
from fuse_export.export.manifest import artifact_entry, write_manifest
from fuse_export.export.metadata import artifact_metadata
from fuse_export.export.calibration import (DEFAULT_CALIBRATION_SAMPLES, CalibrationSet, calibration_warning,
                                            load_calibration, normalize, random_pixels)
from fuse_export.export.onnx_precision import Int8Settings, export_reduced_onnx
from fuse_export.export.to_onnx import DEFAULT_OPSET, export_onnx
from fuse_export.export.to_torchscript import export_torchscript
from fuse_export.model.fused import ExportView
from fuse_export.progress import console
from fuse_export.runners.registry import Backend, backend_for
from fuse_export.train.checkpoint import load_model

VERIFY_SAMPLES = 16


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Path
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, ParityResult] = field(default_factory=dict)


def export_checkpoint(checkpoint: str | os.PathLike, formats: list[Format], out_dir: str | os.PathLike,
                      opset: int = DEFAULT_OPSET, static_batch: bool = False, batch: int = 1,
                      precisions: Sequence[str] = ("fp32",), embed_preprocessing: bool = False,
                      calibration_data: str | os.PathLike | None = None,
                      calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
                      calibration_method: str = "minmax", int8_scheme: str = "auto") -> ExportResult:
    """Export the checkpoint to each format and precision, verify each against eager fp32, write manifest.json.

    A verification failure is an error: the artifact is removed and nothing is added to the manifest.
    Verification inputs are the calibration data's held-out images when given, else seeded noise images. A
    uint8-input artifact gets the raw pixels; its reference is eager fp32 on the same pixels normalized in
    float (the float pipeline). `int8_scheme` "auto" is s8s8 when TensorRT engines are built from the int8
    ONNX in this call, else u8s8 (fast on ONNX Runtime CPU).
    """
    checkpoint = Path(checkpoint)
    out = Path(out_dir)
    loaded = load_model(checkpoint)
    pre = loaded.preprocessing
    given: dict[str, object] = {}
    if opset != DEFAULT_OPSET:
        given["opset"] = opset
    if static_batch:
        given["static_batch"] = True
    reduced = [p for p in precisions if p != "fp32"]
    if reduced:
        given["precision"] = ",".join(reduced)
    if embed_preprocessing:
        given["embed_preprocessing"] = True
    for fmt in formats:
        check_options(fmt, given)
    for fmt in formats:  # GPU-only formats (TensorRT) fail here with the reason, before anything is written
        if not fmt.cpu and not (usable := backend_for(fmt.key, "fp32", "cuda").available())[0]:
            raise BackendUnavailable(f"--format {fmt.key}: {usable[1]}")
    if any(f.key == "tensorrt" for f in formats):  # engines are built from this call's (verified) ONNX export
        formats = [f for f in formats if f.key not in ("onnx", "tensorrt")] + [FORMATS["onnx"], FORMATS["tensorrt"]]
    if "int8" in reduced and calibration_data is None:
        raise UserError("--precision int8 needs --calibration-data PATH (a FER-2013 CSV or a folder of images)")
    calib = None if calibration_data is None else load_calibration(calibration_data, pre, calibration_samples)
    if int8_scheme == "auto":
        int8_scheme = "s8s8" if any(f.key == "tensorrt" for f in formats) else "u8s8"
    int8 = None if calib is None else Int8Settings(calib, calibration_method, int8_scheme,
                                                   batch if static_batch else 16)
    if calib is not None and "int8" in reduced and (warning := calibration_warning(calib)):
        console.print(f"[yellow]{warning}[/yellow]")
    out.mkdir(parents=True, exist_ok=True)
    pixels, labels, verified_on = verification_images(pre, calib)
    if static_batch:  # whole batches only: repeat images up to a multiple of the fixed batch
        idx = np.arange(max(batch, len(pixels) - len(pixels) % batch)) % len(pixels)
        pixels, labels = pixels[idx], None if labels is None else labels[idx]
    floats = normalize(pixels, pre)
    inputs = pixels if embed_preprocessing else floats
    view = ExportView(loaded.model, pre if embed_preprocessing else None).eval()
    example_n = batch if static_batch else max(2, batch)
    example = torch.from_numpy(np.ascontiguousarray(inputs[np.arange(example_n) % len(inputs)]))
    with torch.inference_mode():
        ref_t = ExportView(loaded.model).eval()(torch.from_numpy(floats))
    contract = io_contract(embed_preprocessing)
    reference = {n: t.numpy() for n, t in zip(contract.output_names, ref_t)}
    result = ExportResult(out, out / "manifest.json")
    for fmt in formats:
        for precision in precisions:
            name = artifact_file(fmt, precision, embed_preprocessing)
            path = out / name
            meta = {**artifact_metadata(pre, embed_preprocessing), "precision": precision}
            console.print(f"exporting {fmt.title} {precision} ({contract.layout} input) -> {path}")
            extra: dict[str, Any] = {"static_batch": static_batch}
            if fmt.key == "torchscript":
                export_torchscript(view, example, path, meta)
            elif fmt.key == "onnx" and precision == "fp32":
                export_onnx(view, example, path, contract, meta, opset=opset, static_batch=static_batch)
                extra["opset"] = opset
            elif fmt.key == "onnx":
                extra["opset"] = opset
                extra.update(export_reduced_onnx(view, example, path, contract, meta, precision, pre, opset,
                                                 static_batch, int8, embed_preprocessing))
            elif fmt.key == "pt2":
                from fuse_export.export.to_pt2 import export_pt2  # imports torch._inductor: only when asked

                extra["compile_s"] = round(export_pt2(view, example, path, contract, meta, static_batch=static_batch), 1)
            elif fmt.key == "tensorrt":
                from fuse_export.export.trt_engine import build_engine, manifest_extras  # needs TensorRT + a GPU

                sidecar = build_engine(path.with_suffix(".onnx"), path, precision, log=console.print)
                extra["tensorrt"] = manifest_extras(sidecar, path)
            backend = backend_for(fmt.key, precision, "cpu" if fmt.cpu else "cuda")
            got = _run_artifact(backend, path, checkpoint, pre, embed_preprocessing, inputs,
                                batch if static_batch else len(inputs))
            parity = compare_outputs(backend.key, reference, got, precision)
            console.print(f"  {parity.explain()}")
            if not parity:
                path.unlink(missing_ok=True)
                raise ExportError(f"{path}: exported {fmt.title} {precision} does not match eager PyTorch fp32: "
                                  f"{parity.explain()}; the file was removed")
            extra["verified_on"] = verified_on
            if labels is not None:
                extra["heldout_accuracy"] = {"eager_fp32": _accuracy(reference, labels),
                                             "artifact": _accuracy(got, labels)}
            result.parity[name] = parity
            result.artifacts.append(artifact_entry(out, name, fmt.key, backend.key, pre, precision=precision,
                                                   embed_preprocessing=embed_preprocessing,
                                                   verification=parity.to_dict(), **extra))
    write_manifest(out, checkpoint, pre, result.artifacts)
    return result


def verification_images(pre: Preprocessing, calib: CalibrationSet | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """uint8 RGB images to verify on: the calibration data's held-out images, else seeded noise."""
    if calib is not None and len(calib.held_out):
        return calib.held_out, calib.held_out_labels, f"{len(calib.held_out)} held-out images of {calib.source}"
    return random_pixels(pre, VERIFY_SAMPLES), None, f"{VERIFY_SAMPLES} random images (seed 1234)"


def _run_artifact(backend: Backend, path: Path, checkpoint: Path, pre: Preprocessing, embed: bool,
                  inputs: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """The artifact's outputs over `inputs`, `chunk` images per call (a static batch takes whole batches)."""
    ok, why = backend.available()
    if not ok:
        path.unlink(missing_ok=True)
        raise ExportError(f"cannot verify {path.name}: {why}")
    with backend.factory(path, checkpoint, pre, None, embed) as runner:
        return run_all(runner, inputs, chunk)


def _accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    return round(float((outputs["probabilities"].argmax(1) == labels).mean()), 4)


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
