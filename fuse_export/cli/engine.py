"""`fuse-export build-engine`: a TensorRT engine from an ONNX file, verified (needs TensorRT and a CUDA GPU)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fuse_export.cli.common import user_errors
from fuse_export.errors import UserError


class EnginePrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@user_errors
def build_engine(
    model: Annotated[Path, typer.Argument(help="An ONNX file: model.onnx, model.fp16.onnx, Q/DQ model.int8.onnx.")],
    out: Annotated[Optional[Path], typer.Option(help="Engine file (default: beside the ONNX, .engine).")] = None,
    precision: Annotated[Optional[EnginePrecision], typer.Option(
        help="Default: the ONNX's own. TensorRT 11 takes it from the ONNX only; 10 can lower fp32 to fp16.")] = None,
    batch: Annotated[Optional[str], typer.Option(
        help="Optimization profile MIN:OPT:MAX (or N). Default: N:N:N for a fixed batch, else 1:32:256.")] = None,
    workspace_gb: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 4.0,
    timing_cache: Annotated[Optional[Path], typer.Option(
        help="Timing-cache file, reused and extended across builds (default: per TensorRT version and GPU "
             "under ~/.cache/fuse-export/tensorrt).")] = None,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="TensorRT builder optimization level 0..5.")] = 3,
    verify: Annotated[bool, typer.Option(help="Check parity against eager PyTorch (or ONNX Runtime).")] = True,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Override the parity bound (see export).")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative part of the parity bound.")] = None,
    keep_failed: Annotated[bool, typer.Option(
        help="Keep an engine that fails parity on disk (NAME.failed.engine), out of the manifest.")] = False,
    device: Annotated[Optional[str], typer.Option(help="The GPU to build and verify on: cuda or cuda:N.")] = None,
) -> None:
    """Build a TensorRT engine (raw plan + JSON sidecar) from an ONNX file; needs TensorRT and a CUDA GPU.
    Exit 1 when the engine fails parity, 2 on a user error."""
    from fuse_export.app.engines import build_engine_file, engine_summary
    from fuse_export.exporters.options import VerifyOptions, parse_device

    dev = parse_device(device)
    if dev == "cpu":
        raise UserError("--device cpu: TensorRT engines are built on a GPU; pass cuda or cuda:N")
    result = build_engine_file(model, out, precision.value if precision else None, batch, workspace_gb,
                               timing_cache, opt_level, verify,
                               VerifyOptions(atol=atol, rtol=rtol, keep_failed=keep_failed), dev)
    for line in engine_summary(result):
        typer.echo(line)

