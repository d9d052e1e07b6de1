"""ONNX: the export view through torch.onnx (torch.export-based exporter), one self-contained file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from typing import Any

import torch

from fuse_export.contract import BATCH_AXIS, MAX_BATCH, IOContract
from fuse_export.errors import ExportError, UserError
from fuse_export.fileio import atomic_path

DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's exporter implements 18 and up; its down-conversion fails on this model and keeps 18


def check_opset(opset: int) -> None:
    """Refuse an opset this exporter cannot write, before anything is exported."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET}..{newest} (onnx "
                        f"{onnx.__version__}); choose one in that range (default {DEFAULT_OPSET})")


def written_opset(model: Any) -> int:
    """The default-domain opset an ONNX ModelProto declares."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)


def export_onnx(view: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, contract: IOContract,
                metadata: dict[str, Any], opset: int = DEFAULT_OPSET, static_batch: bool = False,
                optimize: bool = True) -> None:
    """Export, embed metadata, run onnx.checker, write atomically.

    The dynamic batch axis comes from the contract; the example must have batch >= 2, since torch.export
    specializes a size-1 dimension to a constant (pytorch/pytorch#157621).
    """
    import onnx

    if not static_batch and example.shape[0] < 2:
        raise ValueError("a dynamic-batch export needs an example batch >= 2")
    dynamic_shapes = None
    if not static_batch:
        (inp,) = contract.inputs
        axis = inp.dims.index(BATCH_AXIS)
        # Positional form: robust to the forward()'s argument name (the graph input is named by input_names).
        dynamic_shapes = ({axis: torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)},)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                view.eval(), (example,), dynamo=True, input_names=contract.input_names,
                output_names=contract.output_names, opset_version=opset, dynamic_shapes=dynamic_shapes,
                external_data=False, verbose=False, optimize=optimize,  # --no-optimize: when the optimizer breaks a graph
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed at opset {opset} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); try another --opset") from None
    model = program.model_proto
    if written_opset(model) != opset:  # torch falls back to its own opset when a conversion fails, silently
        raise ExportError(f"ONNX export asked for opset {opset} but torch wrote opset {written_opset(model)}; "
                          f"use --opset {written_opset(model)}")
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "fuse-export"
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
