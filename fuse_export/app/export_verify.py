"""Export and verify: write each format from a checkpoint, check every artifact against eager, write the manifest."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.compare.feed import make_runner, run_all
from fuse_export.compare.reference import REFERENCE_FILE, ReferenceSet, save_reference
from fuse_export.compare.parity import ParityResult, compare_outputs
from fuse_export.contract import Preprocessing, check_outputs, io_contract
from fuse_export.errors import BackendUnavailable, ExportError, ParityError, UserError
from fuse_export.extras import require
from fuse_export.exporters.formats import FORMATS, Format, artifact_file, check_options, resolve
from fuse_export.exporters.manifest import MANIFEST, artifact_entry, staged_export, write_manifest
from fuse_export.exporters.metadata import artifact_metadata
from fuse_export.exporters.calibration import calibration_warning, load_calibration, normalize
from fuse_export.exporters.onnx_simplify import simplify_onnx
from fuse_export.exporters.options import ExportOptions, VerifyOptions, failed_name
from fuse_export.exporters.verify_data import verification_images
from fuse_export.fileio import sha256_file
from fuse_export.exporters.int8_weights import INT8_WEIGHTS_KEY, int8_weight_range
from fuse_export.exporters.onnx_precision import Int8Settings, export_reduced_onnx
from fuse_export.exporters.to_onnx import DEFAULT_OPSET, check_opset, export_onnx
from fuse_export.exporters.to_torchscript import export_torchscript
from fuse_export.model.fused import ExportView
from fuse_export.progress import console
from fuse_export.runners.cuda_base import check_device
from fuse_export.runners.registry import Backend, backend_for
from fuse_export.training.checkpoint import load_model


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Path
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, ParityResult] = field(default_factory=dict)


def export_checkpoint(checkpoint: str | os.PathLike, formats: list[Format], out_dir: str | os.PathLike,
                      options: ExportOptions | None = None, verify: VerifyOptions | None = None,
                      force: bool = False, **fields: Any) -> ExportResult:
    """Export the checkpoint to each format and precision, verify each against eager fp32, write manifest.json.

    `fields` are ExportOptions fields given one by one (e.g. `precisions=("fp32", "int8")`), applied over
    `options`. A verification failure raises ParityError (exit code 1): the artifact is removed (renamed
    *.failed.* and kept with `verify.keep_failed`) and nothing is added to the manifest. Verification inputs:
    see VerifyOptions. A uint8-input artifact gets the raw pixels; its reference is eager fp32 on the same
    pixels normalized in float (the float pipeline). `int8_scheme` "auto" is s8s8 when TensorRT engines are
    built from the int8 ONNX in this call, else u8s8 (fast on ONNX Runtime CPU). `int8_weights` "auto" is 7-bit
    on an x86 CPU without VNNI (export/int8_weights.py), the machine the files are verified on.
    """
    opts = dataclasses.replace(options or ExportOptions(), **fields) if fields else (options or ExportOptions())
    for fmt in formats:  # missing extras first: before the checkpoint is read or anything is written
        if fmt.extra:
            require(fmt.extra, f"--format {fmt.key}")
    if opts.simplify:
        require("simplify", "--simplify")
    verify = verify or VerifyOptions()
    opset, static_batch, batch, precisions = opts.opset, opts.static_batch, opts.batch, opts.precisions
    embed_preprocessing, calibration_data = opts.embed_preprocessing, opts.calibration_data
    calibration_samples, calibration_method = opts.calibration_samples, opts.calibration_method
    int8_scheme = opts.int8_scheme
    checkpoint = Path(checkpoint)
    final = Path(out_dir)
    check_device(opts.device)  # cuda:7 without that GPU: refused here, not ignored by CPU formats
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
    for fmt in formats:  # GPU-only formats (TensorRT) and converted ones fail here, before anything is written
        if (not fmt.cpu or fmt.source) and not (usable := backend_for(fmt.key, "fp32", "cpu" if fmt.cpu
                                                                      else "cuda").available())[0]:
            raise BackendUnavailable(f"--format {fmt.key}: {usable[1]}")
    if any(f.key == "tensorrt" for f in formats):  # engines are built from this call's (verified) ONNX export
        formats = [f for f in formats if f.key not in ("onnx", "tensorrt")] + [FORMATS["onnx"], FORMATS["tensorrt"]]
    # Converted formats (OpenVINO IR from ONNX) come after the verified export they are converted from.
    formats = sorted(dict.fromkeys([*formats, *(FORMATS[f.source] for f in formats if f.source)]),
                     key=lambda f: f.source is not None)
    if any(f.key == "onnx" for f in formats):
        check_opset(opset)
    if "int8" in reduced and calibration_data is None:
        raise UserError("--precision int8 needs --calibration-data PATH (a FER-2013 CSV or a folder of images)")
    calib = None if calibration_data is None else load_calibration(calibration_data, pre, calibration_samples)
    if int8_scheme == "auto":
        int8_scheme = "s8s8" if any(f.key == "tensorrt" for f in formats) else "u8s8"
    int8 = None if calib is None else Int8Settings(calib, calibration_method, int8_scheme,
                                                   batch if static_batch else 16, int8_weight_range(opts.int8_weights))
    if calib is not None and "int8" in reduced and (warning := calibration_warning(calib)):
        console.print(f"[yellow]{warning}[/yellow]")
    if int8 is not None and "int8" in reduced:
        console.print(f"int8 weights: {int8.weights.bits}-bit ({int8.weights.reason})")
    protect = () if calibration_data is None else (Path(calibration_data),)
    # Built in a staging folder swapped in whole: a kill or a failed verification leaves `out` as it was.
    with staged_export(final, checkpoint, force, protect) as out:
        images = verification_images(pre, verify, calib, loaded.state,
                                     warn=lambda line: console.print(f"[yellow]{line}[/yellow]"))
        pixels, labels, verified_on = images.pixels, images.labels, images.source
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
        if verify.reference:  # inputs + eager outputs: `bench --reference` checks parity without the checkpoint
            save_reference(out / REFERENCE_FILE, ReferenceSet(floats, pixels, labels, reference, verified_on,
                                                              "pytorch", pre.to_dict(), sha256_file(checkpoint)))
        failed: ParityError | None = None
        result = ExportResult(final, final / MANIFEST)
        for fmt in formats:
            for precision in precisions:
                name = artifact_file(fmt, precision, embed_preprocessing)
                path = out / name
                meta = {**artifact_metadata(pre, embed_preprocessing), "precision": precision}
                console.print(f"exporting {fmt.title} {precision} ({contract.layout} input) -> {final / name}")
                extra: dict[str, Any] = {"static_batch": static_batch}
                if fmt.key == "torchscript":
                    export_torchscript(view, example, path, meta)
                elif fmt.key == "onnx" and precision == "fp32":
                    export_onnx(view, example, path, contract, meta, opset=opset, static_batch=static_batch,
                                optimize=opts.optimize)
                    extra["opset"] = opset
                    if not opts.optimize:
                        extra["optimize"] = False
                    if opts.simplify:
                        extra["simplified"] = simplify_onnx(path)
                elif fmt.key == "onnx":
                    extra["opset"] = opset
                    extra.update(export_reduced_onnx(view, example, path, contract, meta, precision, pre, opset,
                                                     static_batch, int8, embed_preprocessing))
                elif fmt.key == "pt2":
                    from fuse_export.exporters.to_pt2 import export_pt2  # imports torch._inductor: only when asked

                    extra["compile_s"] = round(export_pt2(view, example, path, contract, meta,
                                                          static_batch=static_batch), 1)
                elif fmt.key == "executorch":
                    from fuse_export.exporters.to_executorch import export_executorch  # its own environment

                    cal = None
                    if precision == "int8":  # the int8 ONNX's calibration images, in the model's input contract
                        assert int8 is not None
                        cal = torch.from_numpy(normalize(int8.calib.pixels, pre))
                        extra["calibration"] = {"source": int8.calib.source, "images": len(int8.calib.pixels),
                                                "quantizer": "XNNPACKQuantizer, symmetric, per-channel weights"}
                    extra["lower_s"] = round(export_executorch(view, example, path, contract, meta,
                                                               static_batch=static_batch, calibration=cal), 1)
                elif fmt.key == "tensorrt":
                    from fuse_export.exporters.trt_build import build_engine  # needs TensorRT + a GPU
                    from fuse_export.exporters.trt_engine import manifest_extras

                    sidecar = build_engine(path.with_suffix(".onnx"), path, precision, log=console.print)
                    extra["tensorrt"] = manifest_extras(sidecar, path)
                elif fmt.source and fmt.converter:  # from this call's verified export of the source format
                    source = out / artifact_file(FORMATS[fmt.source], precision, embed_preprocessing)
                    origin = next((a for a in result.artifacts if a["file"] == source.name), {})
                    if "calibration" in origin:  # an int8 IR is its source's quantization: say which one
                        extra["calibration"] = origin["calibration"]
                        meta[INT8_WEIGHTS_KEY] = origin["calibration"][INT8_WEIGHTS_KEY]
                    extra.update(resolve(fmt.converter)(source, path, meta))
                backend = backend_for(fmt.key, precision, "cpu" if fmt.cpu else "cuda")
                got = _run_artifact(backend, path, checkpoint, pre, embed_preprocessing, inputs,
                                    batch if static_batch else len(inputs), opts.device)
                parity = compare_outputs(backend.key, reference, got, precision, verify.atol, verify.rtol)
                console.print(f"  {parity.explain()}")
                if not parity:
                    failed = _parity_failure(out, final, [name, *(c["file"] for c in extra.get("companions", []))],
                                             f"exported {fmt.title} {precision} does not match eager PyTorch fp32: "
                                             f"{parity.explain()}", verify.keep_failed)
                    break
                if problems := check_outputs(got):  # a parity pass cannot prove this: the reference is the same model
                    raise ExportError(f"{final / name}: exported {fmt.title} {precision} breaks the output contract on "
                                      f"the verification batch ({'; '.join(problems)}); nothing was written")
                extra["verified_on"] = verified_on
                if verify.overrides():
                    extra["tolerance_overrides"] = verify.overrides()
                if labels is not None:
                    extra["heldout_accuracy"] = {"eager_fp32": _accuracy(reference, labels),
                                                 "artifact": _accuracy(got, labels)}
                result.parity[name] = parity
                result.artifacts.append(artifact_entry(out, name, fmt.key, backend.key, pre, precision=precision,
                                                       embed_preprocessing=embed_preprocessing,
                                                       verification=parity.to_dict(), **extra))
            if failed is not None:
                break
        write_manifest(out, checkpoint, pre, result.artifacts, lock=False)
        if verify.reference:
            _list_reference(out)
    if failed is not None:  # --keep-failed: the verified artifacts and the failed one are in place now
        raise failed
    return result


def _parity_failure(out: Path, final: Path, files: list[str], what: str, keep: bool) -> ParityError:
    """Raise at once (the staging folder is discarded, the export folder stays as it was), or with `keep` rename
    the failing files *.failed.* and put back any previous artifact of the same name, then return the error
    to raise once the folder is committed."""
    if not keep:
        for f in files:
            (out / f).unlink(missing_ok=True)
        raise ParityError(f"{final / files[0]}: {what}; the file was removed (--keep-failed keeps it to inspect)")
    for f in files:
        if (out / f).exists():
            os.replace(out / f, out / failed_name(f))
        if (final / f).is_file():  # the earlier verified artifact stays in service
            shutil.copy2(final / f, out / f)
    return ParityError(f"{final / failed_name(files[0])}: {what}; kept on disk, not in the manifest")


def _list_reference(out: Path) -> None:
    """Record reference.npz (with its hash) in the staged manifest, beside the artifacts."""
    from fuse_export.fileio import write_json

    path = out / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    ref = out / REFERENCE_FILE
    manifest["reference"] = {"file": REFERENCE_FILE, "sha256": sha256_file(ref), "size_bytes": ref.stat().st_size,
                             "contents": "verification inputs and eager fp32 outputs (bench --reference)"}
    write_json(path, manifest)


def _run_artifact(backend: Backend, path: Path, checkpoint: Path, pre: Preprocessing, embed: bool,
                  inputs: np.ndarray, chunk: int, device: str | None = None) -> dict[str, np.ndarray]:
    """The artifact's outputs over `inputs`, `chunk` images per call (a static batch takes whole batches)."""
    ok, why = backend.available()
    if not ok:
        path.unlink(missing_ok=True)
        raise ExportError(f"cannot verify {path.name}: {why}")
    with make_runner(backend, path, checkpoint, pre, None, embed, device) as runner:
        return run_all(runner, inputs, chunk)


def _accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    return round(float((outputs["probabilities"].argmax(1) == labels).mean()), 4)
