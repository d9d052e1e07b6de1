"""`fuse-export build-engine`: check what is needed, build a TensorRT engine from an ONNX file, verify it,
and list it in the export folder's manifest like every other artifact.

The reference for verification is eager PyTorch fp32 from the manifest's checkpoint when the ONNX sits in
an export folder, else ONNX Runtime (CPU) on the ONNX file itself. A failed check removes the engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable, ExportError, UserError
from fuse_export.export.manifest import MANIFEST, artifact_entry, read_manifest, write_manifest
from fuse_export.export.trt_api import ENGINE_PRECISIONS
from fuse_export.export.trt_engine import (BatchProfile, build_engine, engine_path_for, manifest_extras,
                                           sidecar_path)
from fuse_export.progress import console
from fuse_export.runners.registry import BACKENDS, backend_for

VERIFY_IMAGES = 16


@dataclass
class EngineResult:
    engine: Path
    sidecar: dict[str, Any]
    parity: ParityResult | None
    manifest: Path | None


def require_tensorrt() -> None:
    """Fail at once, with the reason, where TensorRT or a CUDA GPU is missing."""
    ok, why = BACKENDS["tensorrt"].available()
    if not ok:
        raise BackendUnavailable(f"building a TensorRT engine needs TensorRT and a CUDA GPU: {why}")


def build_engine_file(onnx: str | os.PathLike, out: str | os.PathLike | None = None, precision: str | None = None,
                      batch: str | None = None, workspace_gb: float = 4.0,
                      timing_cache: str | os.PathLike | None = None, opt_level: int = 3,
                      verify: bool = True) -> EngineResult:
    onnx = Path(onnx)
    if not onnx.is_file():
        raise UserError(f"{onnx}: no such ONNX file")
    if precision is not None and precision not in ENGINE_PRECISIONS:
        raise UserError(f"--precision {precision}: choose from {', '.join(ENGINE_PRECISIONS)}")
    profile = BatchProfile.parse(batch) if batch else None
    if workspace_gb <= 0:
        raise UserError(f"--workspace-gb {workspace_gb}: expected a positive size in GiB")
    require_tensorrt()
    engine = Path(out) if out else engine_path_for(onnx)
    sidecar = build_engine(onnx, engine, precision, profile, workspace_gb, timing_cache, opt_level,
                           log=console.print)
    if not verify:
        return EngineResult(engine, sidecar, None, None)
    manifest = read_manifest(onnx.parent) if (onnx.parent / MANIFEST).is_file() else None
    entry = next((a for a in (manifest or {}).get("artifacts", []) if a["file"] == onnx.name), None)
    try:
        parity, pre, embed = _verify(onnx, engine, sidecar, manifest, entry)
    except BaseException:
        engine.unlink(missing_ok=True)
        sidecar_path(engine).unlink(missing_ok=True)
        raise
    written = None
    checkpoint = Path(manifest["source_checkpoint"]["path"]) if manifest else None
    if checkpoint is not None and checkpoint.is_file() and entry is not None \
            and engine.parent.resolve() == onnx.parent.resolve():  # listed like every artifact of the folder
        backend = backend_for("tensorrt", sidecar["precision"], "cuda")
        art = artifact_entry(onnx.parent, engine.name, "tensorrt", backend.key, pre, precision=sidecar["precision"],
                             embed_preprocessing=embed, verification=parity.to_dict(),
                             static_batch=bool(entry.get("static_batch")), tensorrt=manifest_extras(sidecar, engine))
        written = write_manifest(onnx.parent, checkpoint, pre, [art])
    return EngineResult(engine, sidecar, parity, written)


def _verify(onnx: Path, engine: Path, sidecar: dict[str, Any], manifest: dict[str, Any] | None,
            entry: dict[str, Any] | None) -> tuple[ParityResult, Preprocessing, bool]:
    from fuse_export.export.calibration import normalize, random_pixels
    from fuse_export.export.to_onnx import read_onnx_metadata

    meta = read_onnx_metadata(onnx)
    if manifest is not None:
        pre = Preprocessing.from_dict(manifest["preprocessing"])
    elif "preprocessing" in meta:
        pre = Preprocessing.from_dict(meta["preprocessing"])
    else:
        raise UserError(f"{onnx}: no {MANIFEST} beside it and no fuse-export metadata inside it; build with "
                        "--no-verify to skip the parity check")
    embed = bool(entry.get("embed_preprocessing")) if entry else meta.get("input_layout") == "uint8-nhwc"
    lo, hi = (int(v) for v in (sidecar["profile"]["min"][0], sidecar["profile"]["max"][0]))
    n = max(lo, min(VERIFY_IMAGES, hi))  # one batch the engine's profile accepts
    pixels = random_pixels(pre, n)
    floats = normalize(pixels, pre)
    feed = pixels if embed else floats
    checkpoint = Path(manifest["source_checkpoint"]["path"]) if manifest else None
    if checkpoint is not None and checkpoint.is_file():
        ref_backend, ref_path, ref_feed, ref_embed = BACKENDS["pytorch"], None, floats, False
    else:  # no checkpoint: ONNX Runtime on the very file the engine came from
        ref_backend, ref_path, ref_feed, ref_embed = BACKENDS["onnxruntime"], onnx, feed, embed
        checkpoint = Path()
    with ref_backend.factory(ref_path, checkpoint, pre, None, ref_embed) as runner:
        reference = runner.infer({runner.contract.input_names[0]: ref_feed})
    backend = backend_for("tensorrt", sidecar["precision"], "cuda")
    with backend.factory(engine, checkpoint, pre, None, embed) as runner:
        got = runner.infer({runner.contract.input_names[0]: feed})
    parity = compare_outputs(backend.key, reference, got, sidecar["precision"])
    console.print(f"  {parity.explain()} (reference: {ref_backend.title})")
    if not parity:
        raise ExportError(f"{engine}: the TensorRT engine does not match {ref_backend.title}: {parity.explain()}; "
                          "the engine was removed")
    return parity, pre, embed


def engine_summary(result: EngineResult) -> list[str]:
    s = result.sidecar
    gpu = f"{s['gpu']['name']}, compute capability {s['gpu']['compute_capability']}"
    lines = [f"engine   {result.engine}  ({s['engine_bytes'] / 1e6:.1f} MB, {s['precision']}, "
             f"TensorRT {s['tensorrt_version']}, {gpu})",
             f"sidecar  {sidecar_path(result.engine)}", f"profile  {s['profile']['batch']} on {s['profile']['input']}"]
    if result.manifest:
        lines.append(f"manifest {result.manifest}")
    return lines

