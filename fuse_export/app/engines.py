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

from fuse_export.compare.feed import make_runner
from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.compare.reference import REFERENCE_FILE, load_reference
from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable, IntegrityError, ParityError, UserError
from fuse_export.exporters.manifest import MANIFEST, artifact_entry, write_manifest
from fuse_export.exporters.manifest_read import read_manifest
from fuse_export.exporters.options import VerifyOptions, failed_name
from fuse_export.exporters.trt_api import ENGINE_PRECISIONS
from fuse_export.exporters.trt_build import build_engine
from fuse_export.exporters.trt_engine import BatchProfile, engine_path_for, manifest_extras, sidecar_path
from fuse_export.progress import console
from fuse_export.runners.cuda_base import check_device
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
                      verify: bool = True, checks: VerifyOptions | None = None,
                      device: str | None = None) -> EngineResult:
    """Build and (with `verify`) check the engine against eager PyTorch, else ONNX Runtime on the same ONNX.

    `checks`: --atol/--rtol overrides and --keep-failed (an engine failing parity is renamed *.failed.engine
    instead of deleted); a parity failure raises ParityError (exit code 1). `device`: "cuda:N" to build on.
    """
    checks = checks or VerifyOptions()
    onnx = Path(onnx)
    if not onnx.is_file():
        raise UserError(f"{onnx}: no such ONNX file")
    if precision is not None and precision not in ENGINE_PRECISIONS:
        raise UserError(f"--precision {precision}: choose from {', '.join(ENGINE_PRECISIONS)}")
    profile = BatchProfile.parse(batch) if batch else None
    if workspace_gb <= 0:
        raise UserError(f"--workspace-gb {workspace_gb}: expected a positive size in GiB")
    require_tensorrt()
    check_device(device)
    if device and device.startswith("cuda:"):  # the builder works on the current CUDA device
        import torch

        torch.cuda.set_device(torch.device(device))
    engine = Path(out) if out else engine_path_for(onnx)
    sidecar = build_engine(onnx, engine, precision, profile, workspace_gb, timing_cache, opt_level,
                           log=console.print)
    if not verify:
        return EngineResult(engine, sidecar, None, None)
    manifest = read_manifest(onnx.parent) if (onnx.parent / MANIFEST).is_file() else None
    entry = next((a for a in (manifest or {}).get("artifacts", []) if a["file"] == onnx.name), None)
    try:
        parity, pre, embed = _verify(onnx, engine, sidecar, manifest, entry, checks, device)
    except ParityError as exc:
        if not checks.keep_failed:
            engine.unlink(missing_ok=True)
            sidecar_path(engine).unlink(missing_ok=True)
            raise
        kept = engine.with_name(failed_name(engine.name))
        os.replace(engine, kept)
        if sidecar_path(engine).exists():
            os.replace(sidecar_path(engine), sidecar_path(kept))
        raise ParityError(f"{kept}: {str(exc).split(': ', 1)[-1].replace('; the engine was removed', '')}; kept on "
                          "disk, not in the manifest") from None
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
            entry: dict[str, Any] | None, checks: VerifyOptions,
            device: str | None) -> tuple[ParityResult, Preprocessing, bool]:
    from fuse_export.exporters.calibration import normalize, random_pixels
    from fuse_export.exporters.metadata import read_onnx_metadata

    meta = read_onnx_metadata(onnx)
    if manifest is not None:
        pre = Preprocessing.from_dict(manifest["preprocessing"])
    elif "preprocessing" in meta:
        try:
            pre = Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a bound (image_size) or malformed field
            raise IntegrityError(f"{onnx}: its embedded preprocessing is malformed ({exc}); re-export it") from None
    else:
        raise UserError(f"{onnx}: no {MANIFEST} beside it and no fuse-export metadata inside it; build with "
                        "--no-verify to skip the parity check")
    embed = bool(entry.get("embed_preprocessing")) if entry else meta.get("input_layout") == "uint8-nhwc"
    lo, hi = (int(v) for v in (sidecar["profile"]["min"][0], sidecar["profile"]["max"][0]))
    n = max(lo, min(VERIFY_IMAGES, hi))  # one batch the engine's profile accepts
    pixels = _reference_pixels(onnx.parent, pre, n)  # the export's real verification images, when beside it
    if pixels is None:
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
    with make_runner(backend, engine, checkpoint, pre, None, embed, device) as runner:
        got = runner.infer({runner.contract.input_names[0]: feed})
    parity = compare_outputs(backend.key, reference, got, sidecar["precision"], checks.atol, checks.rtol)
    console.print(f"  {parity.explain()} (reference: {ref_backend.title})")
    if not parity:
        raise ParityError(f"{engine}: the TensorRT engine does not match {ref_backend.title}: {parity.explain()}; "
                          "the engine was removed")
    return parity, pre, embed


def _reference_pixels(folder: Path, pre: Preprocessing, n: int):
    """The first `n` uint8 images of the export's reference.npz (repeated up to n), or None without one."""
    import numpy as np

    path = folder / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        ref = load_reference(path, pre)
    except UserError:
        return None
    return np.ascontiguousarray(ref.uint8_nhwc[np.arange(n) % len(ref.uint8_nhwc)])


def engine_summary(result: EngineResult) -> list[str]:
    s = result.sidecar
    gpu = f"{s['gpu']['name']}, compute capability {s['gpu']['compute_capability']}"
    lines = [f"engine   {result.engine}  ({s['engine_bytes'] / 1e6:.1f} MB, {s['precision']}, "
             f"TensorRT {s['tensorrt_version']}, {gpu})",
             f"sidecar  {sidecar_path(result.engine)}", f"profile  {s['profile']['batch']} on {s['profile']['input']}"]
    if result.manifest:
        lines.append(f"manifest {result.manifest}")
    return lines

