"""`fuse-export export`: a checkpoint to TorchScript, ONNX, ... with every artifact verified against eager."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import user_errors


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Int8Scheme(str, Enum):
    auto = "auto"
    u8s8 = "u8s8"
    s8s8 = "s8s8"


class Int8Weights(str, Enum):  # export/int8_weights.INT8_WEIGHTS
    auto = "auto"
    bits8 = "8"
    bits7 = "7"


@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by `fuse-export train` (best.pt).")],
    format: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: torchscript,onnx,pt2,openvino,tensorrt (GPU).")] = "torchscript,onnx",
    out: Annotated[Path, typer.Option(help="Output folder (artifacts + manifest.json).")] = Path("runs/export"),
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    static_batch: Annotated[bool, typer.Option(help="Fix the batch size instead of a dynamic batch axis.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of a --static-batch export.")] = 1,
    precision: Annotated[str, typer.Option(
        help="Comma-separated: fp32, fp16, int8 (fp16/int8: onnx, tensorrt; int8: openvino).")] = "fp32",
    embed_preprocessing: Annotated[bool, typer.Option(
        help="Take raw uint8 RGB [N, H, W, 3] and normalize inside the graph.")] = False,
    calibration_data: Annotated[Optional[Path], typer.Option(
        help="int8 calibration images: a FER-2013 CSV or a folder of images (also used to verify).")] = None,
    calibration_samples: Annotated[int, typer.Option(min=1, help="How many calibration images to use.")] = 512,
    calibration_method: Annotated[CalibrationMethod, typer.Option(
        help="How int8 activation ranges are set from the calibration images.")] = CalibrationMethod.minmax,
    int8_scheme: Annotated[Int8Scheme, typer.Option(
        help="int8 Q/DQ types: u8s8 (fast on ONNX Runtime CPU), s8s8 (TensorRT); auto: s8s8 with --format "
             "tensorrt.")] = Int8Scheme.auto,
    int8_weights: Annotated[Int8Weights, typer.Option(
        help="int8 weight range: 8 bits, or 7 for x86 CPUs without VNNI (8-bit weights saturate there); auto: 7 "
             "when this CPU lacks VNNI. Recorded in the manifest.")] = Int8Weights.auto,
    force: Annotated[bool, typer.Option(
        help="Replace OUT whole when it holds another checkpoint's artifacts.")] = False,
    atol: Annotated[Optional[float], typer.Option(
        min=0.0, help="Bound on |Δ| of probabilities and confidence (default per precision); recorded.")] = None,
    rtol: Annotated[Optional[float], typer.Option(
        min=0.0, help="Add rtol*|reference| to the bound (default 0); recorded in the manifest.")] = None,
    keep_failed: Annotated[bool, typer.Option(
        help="Keep an artifact that fails parity on disk (NAME.failed.EXT), out of the manifest.")] = False,
    verify_data: Annotated[Optional[Path], typer.Option(
        help="Images to verify on (any data-set format, or a folder of images). Default: the calibration "
             "data, else the data the checkpoint was trained on, else noise (with a warning).")] = None,
    verify_data_format: Annotated[Optional[str], typer.Option(
        help="Format of --verify-data (default: fer2013-csv for a .csv, else a folder of images).")] = None,
    verify_samples: Annotated[int, typer.Option(min=1, help="How many images to verify on.")] = 64,
    simplify: Annotated[bool, typer.Option(
        help="Simplify the fp32 ONNX graph with onnxslim (needs the `simplify` extra).")] = False,
    optimize: Annotated[bool, typer.Option(
        help="torch.onnx.export's graph optimizer; --no-optimize when it breaks a graph.")] = True,
    device: Annotated[Optional[str], typer.Option(
        help="Where GPU formats (TensorRT) are built and verified: cuda or cuda:N.")] = None,
) -> None:
    """Export to TorchScript, ONNX, ...; every artifact is verified against eager PyTorch (exit 1 if one fails)."""
    from fuse_export.exporters.options import ExportOptions, VerifyOptions, parse_device
    from fuse_export.app.api import export as export_api

    options = ExportOptions(opset=opset, static_batch=static_batch, batch=batch,
                            embed_preprocessing=embed_preprocessing, calibration_data=calibration_data,
                            calibration_samples=calibration_samples,
                            calibration_method=CalibrationMethod(calibration_method).value,
                            int8_scheme=Int8Scheme(int8_scheme).value, int8_weights=Int8Weights(int8_weights).value,
                            simplify=simplify, optimize=optimize,
                            device=parse_device(device))
    verify = VerifyOptions(atol=atol, rtol=rtol, keep_failed=keep_failed, data=verify_data,
                           data_format=verify_data_format, samples=verify_samples)
    manifest = export_api(checkpoint, format, precision, out, options, verify, force=force)
    for name in manifest.parity:
        a = next(x for x in manifest.artifacts if x["file"] == name)
        typer.echo(f"{a['format']:<12} {a['precision']:<5} {out / a['file']}  ({a['size_bytes'] / 1e6:.1f} MB, "
                   f"sha256 {a['sha256'][:12]})")
    typer.echo(f"manifest: {manifest.path}")
    if manifest.reference is not None:
        typer.echo(f"reference: {manifest.reference}  (fuse-export bench {out} --reference {manifest.reference})")

