"""TensorRT 10 vs 11 in one place: a capability object built from `trt.__version__`, and the build plan.

TensorRT 11 removed the weak-typing precision flags (FP16, INT8, OBEY_PRECISION_CONSTRAINTS, ...) and the
INT8 calibrators: a network is always strongly typed, so the ONNX carries the precision (fp16 from an fp16
ONNX, int8 from a Q/DQ ONNX). TensorRT 10 can build those ONNX files strongly typed too, and can in addition
lower an fp32 ONNX to fp16 with the FP16 builder flag (keeping chosen layers in fp32 with per-layer
precision and OBEY_PRECISION_CONSTRAINTS). Every other module asks `TrtApi`; none compares versions itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fuse_export.errors import BackendUnavailable, ExportError

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = "pip install tensorrt (the NVIDIA wheel; it needs an NVIDIA GPU and driver)"


def import_tensorrt():
    """The `tensorrt` module, or BackendUnavailable with what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        detail = "" if isinstance(exc, ModuleNotFoundError) and exc.name == "tensorrt" else f" ({exc})"
        raise BackendUnavailable(f"TensorRT is not installed{detail}: {INSTALL_HINT}") from None
    return tensorrt


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder for one (precision, ONNX) pair on one TensorRT version."""

    precision: str
    onnx_kind: str
    strongly_typed: bool
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    set_flags: tuple[str, ...]  # BuilderFlag names to set
    clear_flags: tuple[str, ...]  # BuilderFlag names to clear
    pin_fp32: bool  # per-layer fp32 for the SCN sigmoid, the softmaxes and what follows them

    def describe(self) -> str:
        typing = "strongly typed (the ONNX decides every tensor's type)" if self.strongly_typed else "weakly typed"
        flags = ", ".join(self.set_flags) or "no precision flags"
        return f"{self.precision} from a {self.onnx_kind} ONNX: {typing}, {flags}" + (
            ", sigmoid/softmax and the layers after them pinned to fp32" if self.pin_fp32 else "")


@dataclass(frozen=True)
class TrtApi:
    """What the installed TensorRT offers, decided by its major version."""

    version: str
    major: int
    minor: int

    @classmethod
    def from_version(cls, version: str) -> TrtApi:
        m = re.match(r"^\s*(\d+)\.(\d+)", version)
        if not m:
            raise BackendUnavailable(f"cannot read the TensorRT version {version!r}")
        major, minor = int(m.group(1)), int(m.group(2))
        if major < SUPPORTED_MAJORS[0]:
            raise BackendUnavailable(f"TensorRT {version} is too old: fuse-export supports TensorRT 10.x and 11.x "
                                     "(pip install -U tensorrt)")
        return cls(version.strip(), major, minor)

    @classmethod
    def installed(cls) -> TrtApi:
        return cls.from_version(import_tensorrt().__version__)

    @property
    def always_strongly_typed(self) -> bool:
        """TensorRT 11: every network is strongly typed (kSTRONGLY_TYPED is kept but ignored)."""
        return self.major >= 11

    @property
    def has_precision_flags(self) -> bool:
        """BuilderFlag.FP16/INT8/BF16 and OBEY_PRECISION_CONSTRAINTS (removed in 11.0)."""
        return self.major < 11

    @property
    def has_int8_calibrators(self) -> bool:
        """IInt8EntropyCalibrator2 and friends (deprecated in 10.1, removed in 11.0); we never use them."""
        return self.major < 11

    @property
    def ort_trt_fp16_option(self) -> bool:
        """Whether ONNX Runtime's `trt_fp16_enable` maps onto a builder flag that still exists."""
        return self.major < 11

    def plan(self, precision: str | None, onnx_kind: str, onnx_name: str = "the ONNX") -> BuildPlan:
        """The builder configuration for `precision` (default: the ONNX's own) from an ONNX of `onnx_kind`."""
        if onnx_kind not in ("fp32", "fp16", "int8"):
            raise ExportError(f"{onnx_name} is a {onnx_kind} ONNX; TensorRT engines are built from fp32, fp16 "
                              "or Q/DQ int8 ONNX files")
        precision = precision or onnx_kind
        if precision not in ENGINE_PRECISIONS:
            raise ExportError(f"--precision {precision}: engines are built as {', '.join(ENGINE_PRECISIONS)}"
                              + ("; export a fp16 ONNX instead" if precision == "bf16" else ""))
        # TF32 rounds fp32 convolutions and matmuls to 10-bit mantissas: off, so fp32 parity holds at 1e-4.
        clear = ("TF32",)
        if precision == onnx_kind:
            if precision == "fp32":
                return BuildPlan(precision, onnx_kind, self.always_strongly_typed, (), (), clear, False)
            # fp16 / Q/DQ int8 ONNX: build strongly typed on both majors, so the ONNX alone decides types.
            net = () if self.always_strongly_typed else ("STRONGLY_TYPED",)
            return BuildPlan(precision, onnx_kind, True, net, (), clear, False)
        if precision == "fp16" and onnx_kind == "fp32" and self.has_precision_flags:
            return BuildPlan(precision, onnx_kind, False, (), ("FP16", "OBEY_PRECISION_CONSTRAINTS"), clear, True)
        raise ExportError(self._mismatch(precision, onnx_kind, onnx_name))

    def _mismatch(self, precision: str, onnx_kind: str, onnx_name: str) -> str:
        wanted = {"fp16": "model.fp16.onnx (fuse-export export --precision fp16)",
                  "int8": "model.int8.onnx, a Q/DQ ONNX (fuse-export export --precision int8)",
                  "fp32": "model.onnx (the fp32 export)"}[precision]
        if precision == "int8" and self.has_int8_calibrators:
            why = ("implicit INT8 calibration is deprecated since TensorRT 10.1 and gone in 11.0, so int8 "
                   "engines come only from a Q/DQ ONNX")
        elif not self.has_precision_flags:
            why = f"TensorRT {self.version} has no precision flags: the precision comes from the ONNX"
        else:
            why = f"a {onnx_kind} ONNX cannot become a {precision} engine"
        return f"{onnx_name} is {onnx_kind} but --precision is {precision}: {why}; build from {wanted}"


@dataclass(frozen=True)
class LayerInfo:
    """What the fp32-pinning rule needs to know about one network layer (TensorRT or ONNX node)."""

    name: str
    kind: str  # TensorRT LayerType name, e.g. SOFTMAX, ACTIVATION, ELEMENTWISE
    activation: str | None  # ActivationType name for ACTIVATION layers
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    float_outputs: bool  # only float tensors may be given an fp32 output type


def fp32_layers(layers: Sequence[LayerInfo]) -> list[int]:
    """Layers to keep in fp32 under weak typing: the SCN sigmoid, every softmax, and all float layers after them.

    The heads' probabilities differ by ~1e-3 between classes for an uncertain image; rounding them to fp16
    before the stacker flips predictions, so everything downstream of the first sigmoid/softmax stays fp32.
    Layers arrive in topological order (TensorRT's network order, ONNX's node order); returns their indices.
    """
    pinned_tensors: set[str] = set()
    out: list[int] = []
    for i, layer in enumerate(layers):
        seed = layer.kind == "SOFTMAX" or (layer.kind == "ACTIVATION" and layer.activation == "SIGMOID")
        downstream = any(t in pinned_tensors for t in layer.inputs)
        if (seed or downstream) and layer.float_outputs:
            out.append(i)
            pinned_tensors.update(layer.outputs)
    return out
