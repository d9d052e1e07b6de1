"""ExecuTorch: the export view through `torch.export`, lowered to the XNNPACK delegate, as one `.pte` program.

ExecuTorch is PyTorch's runtime for phones and embedded boards: a small C++ runtime loads the `.pte`, and the
XNNPACK delegate runs the convolutions on Arm and x86 CPUs. The program has two methods: `forward` (the I/O
contract: one image batch in, logits / probabilities / confidence out, the batch axis dynamic up to MAX_BATCH)
and METADATA_METHOD, a constant method returning the artifact metadata as UTF-8 JSON bytes (a uint8 tensor), so
the file describes itself without its manifest. The `executorch` package needs numpy >= 2, which the `serve`
extra cannot share: it lives in an environment of its own (the `executorch` extra).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fuse_export.contract import BATCH_AXIS, IOContract
from fuse_export.errors import BackendUnavailable, ExportError, UserError
from fuse_export.fileio import atomic_open

METADATA_METHOD = "fuse_export_metadata"
# The batch axis' upper bound. ExecuTorch plans memory for it at load time (an edge device pays for the largest
# batch up front), and with ExecuTorch 1.5.1 a bound above 15 still left the input capacity at 15 images (16 was
# refused at run time): 8 is planned exactly. Larger batches are run in pieces by the runner.
MAX_BATCH_ET = 8


def require_executorch() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise BackendUnavailable("executorch is not installed: pip install 'fuse-export[executorch]' in an "
                                 "environment of its own (it needs numpy >= 2, the serve extra numpy < 2)") from None


def export_executorch(view: Any, example: Any, path: str | os.PathLike, contract: IOContract,
                      metadata: dict[str, Any], static_batch: bool = False, calibration: Any = None) -> float:
    """torch.export the view, lower it to XNNPACK and write the program atomically; returns the seconds it took.

    The batch axis is a dynamic `Dim` up to MAX_BATCH_ET unless `static_batch` (an example batch >= 2 is needed,
    since torch.export specializes a size-1 dimension to a constant); the metadata records the bound. With
    `calibration` (model inputs, a float tensor [N, ...]) the program is int8: PyTorch 2 export quantization with
    XNNPACK's quantizer (symmetric, per-channel weights, static activation ranges observed on those inputs, in
    batches the program accepts), lowered the same way."""
    require_executorch()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if not static_batch and example.shape[0] < 2:
        raise ValueError("a dynamic-batch export needs an example batch >= 2")
    dynamic_shapes = None
    if not static_batch:
        (inp,) = contract.inputs
        dynamic_shapes = ({inp.dims.index(BATCH_AXIS): torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH_ET)},)
        example = example[:MAX_BATCH_ET]
    metadata = {**metadata, "max_batch": int(example.shape[0]) if static_batch else MAX_BATCH_ET}
    raw = json.dumps(metadata, sort_keys=True).encode("utf-8")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(view.eval(), (example,), dynamic_shapes=dynamic_shapes)
            if calibration is not None:
                program = _quantized(program, calibration, example, dynamic_shapes)
            edge = to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()],
                constant_methods={METADATA_METHOD: torch.tensor(list(raw), dtype=torch.uint8)})
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # torch.export / lowering errors are long: their first line names the problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"executorch export (torch.export + XNNPACK) failed: {type(exc).__name__}: "
                          f"{first[:300]}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        fh.write(buffer)
    return time.perf_counter() - start


def _quantized(program: Any, calibration: Any, example: Any, dynamic_shapes: Any) -> Any:
    """The exported program through PT2E: observers inserted, calibration batches run, Q/DQ ops in place."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                        get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    module = prepare_pt2e(program.module(), quantizer)
    step = int(example.shape[0])
    for start in range(0, len(calibration), step):
        module(calibration[start:start + step])
    module = convert_pt2e(module)
    return torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)


def load_executorch(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(the program's loaded `forward` method, its fuse-export metadata), through `executorch.runtime`."""
    require_executorch()
    from executorch.runtime import Runtime

    if not Path(path).is_file():
        raise UserError(f"{path}: no such ExecuTorch program")
    try:
        program = Runtime.get().load_program(str(path))
        method = program.load_method("forward")
        meta = _metadata_of(program)
    except Exception as exc:  # a truncated or foreign file fails inside the runtime's loader
        raise UserError(f"{path}: not a loadable ExecuTorch program ({type(exc).__name__}); re-export it with "
                        "--format executorch") from None
    return method, meta


def _metadata_of(program: Any) -> dict[str, Any]:
    if METADATA_METHOD not in program.method_names:
        return {}
    (tensor,) = program.load_method(METADATA_METHOD).execute([])
    return json.loads(bytes(tensor.numpy().tolist()).decode("utf-8"))


def read_executorch_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata embedded in a `.pte` (the format table's `metadata_reader`)."""
    return load_executorch(path)[1]
