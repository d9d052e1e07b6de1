"""ONNX: the export view through torch.onnx (torch.export-based exporter), one self-contained file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from typing import Any

import torch

from fuse_export.contract import BATCH_AXIS, IOContract
from fuse_export.errors import ExportError
from fuse_export.fileio import atomic_path

DEFAULT_OPSET = 18
MAX_BATCH = 4096


def export_onnx(view: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, contract: IOContract,
                metadata: dict[str, Any], opset: int = DEFAULT_OPSET, static_batch: bool = False) -> None:
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
                external_data=False, verbose=False, optimize=True,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed at opset {opset} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); try another --opset") from None
    model = program.model_proto
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "fuse-export"
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out
