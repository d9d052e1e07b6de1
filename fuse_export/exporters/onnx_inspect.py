"""What an ONNX file really is: fp32, fp16 (fp16 weights/casts) or int8 (Q/DQ nodes), its input and batch axis.

TensorRT 11 takes the precision from the ONNX, so a file called model.fp16.onnx must really hold fp16
weights, and a Q/DQ model must really hold QuantizeLinear/DequantizeLinear pairs. This module reads the
graph (with ONNX shape inference for tensor types) and says which, plus whether the precision-sensitive
ops (the SCN sigmoid and the softmaxes) still compute in fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fuse_export.errors import ExportError
from fuse_export.exporters.trt_api import LayerInfo

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# LogSoftmax: the stacker reads log-probabilities; TensorRT parses it as a SOFTMAX layer plus a LOG.
SENSITIVE_OPS = frozenset({"Sigmoid", "Softmax", "LogSoftmax"})
# onnx.TensorProto data types (numbers, so that this table needs no onnx import).
FLOAT, FLOAT16, DOUBLE, BFLOAT16 = 1, 10, 11, 16
FLOAT_TYPES = frozenset({FLOAT, FLOAT16, DOUBLE, BFLOAT16})
TYPE_NAMES = {FLOAT: "float32", FLOAT16: "float16", DOUBLE: "float64", BFLOAT16: "bfloat16"}
_ACTIVATIONS = {"Relu": "RELU", "Sigmoid": "SIGMOID", "Tanh": "TANH", "LeakyRelu": "LEAKY_RELU", "Elu": "ELU"}


@dataclass
class OnnxInfo:
    path: str
    input_name: str
    input_dims: list[int | str]  # ints for static axes, the symbol for dynamic ones
    kind: str  # fp32 | fp16 | bf16 | int8
    float_initializers: int
    fp16_initializers: int
    bf16_initializers: int
    fp16_casts: int
    qdq_nodes: int
    sensitive_ops: dict[str, str] = field(default_factory=dict)  # node name -> dtype it computes in
    layers: list[LayerInfo] = field(default_factory=list)

    @property
    def static_batch(self) -> int | None:
        """The fixed batch size, or None when the batch axis is dynamic."""
        first = self.input_dims[0]
        return first if isinstance(first, int) and first > 0 else None

    @property
    def reduced_sensitive_ops(self) -> list[str]:
        """Sigmoid/(Log)Softmax nodes that compute below fp32 (they cost parity in an fp16 engine)."""
        return [n for n, t in self.sensitive_ops.items() if t not in ("float32", "float64")]

    def summary(self) -> str:
        parts = [f"{self.kind}", f"input {self.input_name} {self.input_dims}"]
        if self.fp16_initializers:
            parts.append(f"{self.fp16_initializers} fp16 / {self.float_initializers} fp32 initializers")
        if self.qdq_nodes:
            parts.append(f"{self.qdq_nodes} Q/DQ nodes")
        return ", ".join(parts)


def _elem_types(model) -> dict[str, int]:
    """Tensor name -> element type, from inputs, outputs, initializers and inferred value_info."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a best effort: without it, sensitive ops' dtypes read "unknown"
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _layer(node, types: dict[str, int]) -> LayerInfo:
    if node.op_type in ("Softmax", "LogSoftmax"):
        kind, act = "SOFTMAX", None
    elif node.op_type in _ACTIVATIONS:
        kind, act = "ACTIVATION", _ACTIVATIONS[node.op_type]
    else:
        kind, act = node.op_type.upper(), None
    float_out = bool(node.output) and all(types.get(o, 0) in FLOAT_TYPES for o in node.output)
    return LayerInfo(node.name or node.output[0], kind, act, tuple(node.input), tuple(node.output), float_out)


def inspect_onnx(path: str | os.PathLike) -> OnnxInfo:
    """Read `path` (no external data needed) and classify its precision."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    g = model.graph
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ExportError(f"{path}: expected one graph input, found {[i.name for i in inputs]}")
    dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                             for d in inputs[0].type.tensor_type.shape.dim]
    counts = {FLOAT: 0, FLOAT16: 0, BFLOAT16: 0}
    for t in g.initializer:
        if t.data_type in counts:
            counts[t.data_type] += 1
    cast_to = [a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    casts16, casts_bf16 = cast_to.count(FLOAT16), cast_to.count(BFLOAT16)
    qdq = sum(1 for n in g.node if n.op_type in QDQ_OPS)
    if qdq:
        kind = "int8"
    elif counts[FLOAT16] or casts16:
        kind = "fp16"
    elif counts[BFLOAT16] or casts_bf16:
        kind = "bf16"
    else:
        kind = "fp32"
    types = _elem_types(model)
    sensitive = {n.name or n.output[0]: TYPE_NAMES.get(types.get(n.input[0], 0), "unknown")
                 for n in g.node if n.op_type in SENSITIVE_OPS}
    return OnnxInfo(str(path), inputs[0].name, dims, kind, counts[FLOAT], counts[FLOAT16], counts[BFLOAT16], casts16,
                    qdq, sensitive, [_layer(n, types) for n in g.node])


def check_onnx_precision(path: str | os.PathLike, expected: str) -> OnnxInfo:
    """Refuse a file whose content is not the precision its role claims (e.g. an fp32 model.fp16.onnx)."""
    info = inspect_onnx(path)
    if info.kind != expected:
        found = (f"{info.fp16_initializers} fp16 and {info.float_initializers} fp32 initializers, "
                 f"{info.fp16_casts} casts to fp16, {info.qdq_nodes} Q/DQ nodes")
        raise ExportError(f"{path}: expected a {expected} ONNX but it is {info.kind} ({found}); re-export it "
                          f"with `fuse-export export --precision {expected}`")
    return info
