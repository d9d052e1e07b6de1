"""Reduced-precision ONNX: an fp16 graph, and int8 static post-training quantization to a Q/DQ graph.

Both start from the fp32 export. The parts where reduced precision hurts parity and saves no time stay fp32:
the heads after global pooling (the SCN sigmoid that scales the logits, the softmaxes and the stacker are a
few thousand FLOPs against ResNet-18's 1.8 GMAC) and, in uint8-input graphs, the in-graph normalization.
int8 is calibrated on the user's images passed through the recipe's evaluation geometry (resize, center
crop) and normalization (`fuse_export.exporters.calibration`), with per-channel symmetric weights in a full 8-bit
or a 7-bit range (INT8_WEIGHTS: 7-bit for x86 CPUs without VNNI) and one of two activation schemes
(INT8_SCHEMES): u8s8 for ONNX Runtime on CPU, s8s8 for TensorRT. onnx and onnxruntime are imported only
inside these functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.errors import ExportError, UserError
from fuse_export.exporters.calibration import CALIBRATION_METHODS, CalibrationSet, normalize
from fuse_export.exporters.int8_weights import INT8_WEIGHTS_KEY, WEIGHT_RANGES, WeightRange, int8_weight_range
from fuse_export.fileio import atomic_path

POOLING_OPS = ("GlobalAveragePool", "ReduceMean")


def _downstream(nodes: list, start: set[str]) -> list[str]:
    """Names of the nodes that (transitively) consume any tensor in `start`, in graph order."""
    live, out = set(start), []
    for n in nodes:  # ONNX graphs are topologically sorted
        if any(i in live for i in n.input):
            out.append(n.name)
            live.update(n.output)
    return out


def head_nodes(model) -> list[str]:
    """Nodes after the last global pooling: the heads, the sigmoid, the softmaxes and the stacker."""
    pools = [n for n in model.graph.node if n.op_type in POOLING_OPS]
    return _downstream(list(model.graph.node), set(pools[-1].output)) if pools else []


def preprocessing_nodes(model) -> list[str]:
    """Nodes between the graph input and the first Conv (the in-graph uint8 -> float normalization)."""
    nodes = list(model.graph.node)
    first_conv = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), None)
    if first_conv is None:
        return []
    return _downstream(nodes[:first_conv], {i.name for i in model.graph.input})


def _toposort(graph) -> None:
    """Restore topological node order (Cast nodes are appended at the end of the node list)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ExportError(f"converted graph has nodes with unknown inputs: {pending[0].name}")
        for n in ready:
            known.update(n.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _finish(model, metadata: dict[str, Any], path: Path) -> None:
    """Replace the metadata, check the graph, write atomically."""
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "fuse-export"
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantization tools print progress to stdout and log hints to the root logger; keep them out."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def convert_fp16(src: Path, dst: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """fp16 weights and activations in the backbone; inputs, outputs, heads and normalization stay fp32.

    The backbone region is converted as a whole, with one Cast where fp32 tensors enter it and one where its
    output leaves. (ORT's and onnxconverter-common's converters wrap each blocked node in its own Cast pair, so
    blocked nodes would still exchange fp16 values and carry fp16-rounded weights.)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    graph = model.graph
    keep = set(preprocessing_nodes(model) + head_nodes(model))
    inside = [n for n in graph.node if n.name not in keep]
    outside = [n for n in graph.node if n.name in keep]
    is_float = {v.name for v in (*graph.input, *graph.value_info, *graph.output)
                if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    inits = {t.name: t for t in graph.initializer}
    used_outside = {i for n in outside for i in n.input} | {o.name for o in graph.output}
    produced_inside = {o for n in inside for o in n.output}
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            casts[name, to] = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            graph.node.append(helper.make_node("Cast", [name], [casts[name, to]], to=to,
                                               name=f"cast_{casts[name, to]}"))
        return casts[name, to]

    for n in inside:
        for k, name in enumerate(n.input):
            t = inits.get(name)
            if t is not None and t.data_type == TensorProto.FLOAT:
                if name in used_outside:  # never the case for this model: the heads have their own weights
                    raise ExportError(f"initializer {name!r} is used inside and outside the fp16 region")
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), name))
            elif name in is_float and name not in produced_inside and name not in inits:
                n.input[k] = cast(name, TensorProto.FLOAT16)  # graph input or normalization output
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
    for n in outside:
        for k, name in enumerate(n.input):
            if name in produced_inside and name in is_float:
                n.input[k] = cast(name, TensorProto.FLOAT)
    if any(o.name in produced_inside for o in graph.output):
        raise ExportError("a graph output comes from inside the fp16 region; expected it after global pooling")
    del graph.value_info[:]  # element types changed; ONNX Runtime infers them again
    _toposort(graph)
    _finish(model, metadata, dst)
    return {"fp16_nodes": len(inside), "fp32_nodes": len(outside)}


def _reader(feeds: np.ndarray, input_name: str, batch: int):
    """A CalibrationDataReader over equal-size batches (ORT's histogram calibrators need equal shapes)."""
    from onnxruntime.quantization import CalibrationDataReader

    n = len(feeds)
    reps = -(-max(n, batch) // batch) * batch
    padded = np.concatenate([feeds] * -(-reps // n))[:reps]  # wrap around to fill the last batch

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, reps, batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.batches, None)
            return None if i is None else {input_name: np.ascontiguousarray(padded[i:i + batch])}

    return Reader()


def _entropy_ranges(model: Path, reader: Any, tmp: Path) -> dict[str, list[dict[str, np.ndarray]]]:
    """Activation ranges minimizing KL divergence over a 2048-bin histogram (TensorRT's entropy calibration).

    `quantize_static` builds its entropy calibrator with 128 bins and 128 quantized bins, which leaves one
    candidate threshold: the min-max range. So the ranges are computed here and passed as overrides.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(model, None, augmented_model_path=str(tmp / "entropy.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    # numpy scalars, not floats: ORT computes the scale from rmin.dtype.
    return {name: [{"rmin": np.asarray(d.range_value[0], np.float32), "rmax": np.asarray(d.range_value[1], np.float32)}]
            for name, d in ranges.data.items()}


# Activation x weight types of the Q/DQ file. u8s8: what ONNX Runtime's x86 kernels fuse into QLinearConv
# (VNNI's u8 x s8 dot product); measured 3-4x faster than fp32 at 224x224. s8s8 (zero points 0): what
# TensorRT's explicit quantization requires; ONNX Runtime on x86 leaves about half its convs unfused, so it
# runs there at about fp32 speed.
INT8_SCHEMES = {
    "u8s8": ("uint8 asymmetric per-tensor", False),
    "s8s8": ("int8 symmetric per-tensor", True),
}


@dataclass(frozen=True)
class Int8Settings:
    """How to quantize: the calibration images, the range method, the Q/DQ scheme, the calibration batch and
    the weight range (INT8_WEIGHTS, or a resolved WeightRange)."""

    calib: CalibrationSet
    method: str = "minmax"
    scheme: str = "u8s8"
    batch: int = 16
    weights: str | WeightRange = "auto"


def quantize_int8(src: Path, dst: Path, metadata: dict[str, Any], calib: CalibrationSet, pre: Preprocessing,
                  method: str = "minmax", embed_preprocessing: bool = False, batch: int = 16,
                  scheme: str = "u8s8", weights: str | WeightRange = "auto") -> dict[str, Any]:
    """Static PTQ to Q/DQ: ORT's pre-processing, then `quantize_static` calibrated on `calib`, with weights in
    the range `weights` (see int8_weight_range); the range is recorded in the file's metadata and returned."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration-method {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    if scheme not in INT8_SCHEMES:
        raise UserError(f"--int8-scheme {scheme!r}: choose from {', '.join(INT8_SCHEMES)}")
    wr = weights if isinstance(weights, WeightRange) else int8_weight_range(weights)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activations, symmetric = INT8_SCHEMES[scheme]
    feeds = calib.pixels if embed_preprocessing else normalize(calib.pixels, pre)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=dst.parent) as tmp, _quiet():
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        quant_pre_process(str(src), str(prepared))
        model = onnx.load(str(prepared))
        exclude = preprocessing_nodes(model) + head_nodes(model)
        name = model.graph.input[0].name
        options: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
        if method == "entropy":
            options["TensorQuantOverrides"] = _entropy_ranges(prepared, _reader(feeds, name, batch), Path(tmp))
        quantize_static(str(prepared), str(quantized), _reader(feeds, name, batch),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=wr.reduce_range,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=methods[method], extra_options=options)
        _finish(onnx.load(str(quantized)), {**metadata, INT8_WEIGHTS_KEY: wr.to_dict()}, dst)
    lo, hi = WEIGHT_RANGES[wr.bits]
    return {"calibration": {**calib.describe(), "method": method, "scheme": scheme, "activations": activations,
                            "weights": f"int8 symmetric per-channel, {wr.bits}-bit range [{lo}, {hi}]",
                            INT8_WEIGHTS_KEY: wr.to_dict(), "fp32_nodes": len(exclude)}}


def export_reduced_onnx(view: Any, example: Any, path: Path, contract: Any, metadata: dict[str, Any], precision: str,
                        pre: Preprocessing, opset: int, static_batch: bool = False, int8: Int8Settings | None = None,
                        embed_preprocessing: bool = False) -> dict[str, Any]:
    """Export the fp32 graph to a temporary file and convert it to `precision`; returns manifest extras."""
    from fuse_export.exporters.to_onnx import export_onnx

    if precision == "int8" and int8 is None:
        raise UserError("--precision int8 needs --calibration-data PATH (a FER-2013 CSV or a folder of images)")
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        src = Path(tmp) / "fp32.onnx"
        export_onnx(view, example, src, contract, metadata, opset=opset, static_batch=static_batch)
        if precision == "fp16":
            return convert_fp16(src, path, metadata)
        if precision == "int8" and int8 is not None:
            return quantize_int8(src, path, metadata, int8.calib, pre, int8.method, embed_preprocessing, int8.batch,
                                 int8.scheme, int8.weights)
    raise UserError(f"--precision {precision!r}: ONNX offers fp32, fp16, int8")
