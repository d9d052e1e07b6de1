"""The backend table: which runner executes which artifact, and whether it can run here (and why not)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuse_export.contract import Preprocessing
from fuse_export.errors import UserError
from fuse_export.runners.base import Runner
from fuse_export.runners.gpu_backends import gpu_backend_rows


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torch() -> tuple[bool, str]:
    # Checked without importing torch (seconds): the slim runtime install has none, and says so.
    if not _has("torch"):
        return False, "torch not installed (the slim runtime install): pip install 'fuse-export[train]'"
    return True, ""


def _onnxruntime_cpu() -> tuple[bool, str]:
    if not _has("onnxruntime"):
        return False, "onnxruntime not installed (pip install onnxruntime)"
    return True, ""


@dataclass(frozen=True)
class Backend:
    key: str
    title: str
    format: str | None  # export format it runs; None = the checkpoint itself (eager reference)
    device: str
    precision: str
    availability: Callable[[], tuple[bool, str]]
    factory: Callable[..., Runner]
    # Precision of the artifact it runs when that differs from its own (bf16 runs the fp32 IR / checkpoint).
    artifact_precision: str | None = None

    @property
    def runs_precision(self) -> str:
        return self.artifact_precision or self.precision

    def available(self) -> tuple[bool, str]:
        return self.availability()


def _eager(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None, embed: bool) -> Runner:
    from fuse_export.runners.torch_runners import EagerRunner

    return EagerRunner(checkpoint, pre, threads=threads, embed_preprocessing=embed, label="pytorch")


def _torchscript(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None, embed: bool) -> Runner:
    from fuse_export.runners.torch_runners import TorchScriptRunner

    return TorchScriptRunner(artifact, pre, threads=threads, embed_preprocessing=embed, label="torchscript")


def _ort_cpu(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None, embed: bool) -> Runner:
    from fuse_export.runners.ort_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(artifact, pre, threads=threads, embed_preprocessing=embed, label="onnxruntime")


def _ort_cpu_as(label: str) -> Callable[..., Runner]:
    """The ONNX Runtime CPU runner under another label (reduced-precision ONNX files run on the same runner)."""

    def factory(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None,
                embed: bool) -> Runner:
        from fuse_export.runners.ort_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(artifact, pre, threads=threads, embed_preprocessing=embed, label=label)

    return factory


def _openvino() -> tuple[bool, str]:
    if not _has("openvino"):
        return False, "openvino not installed (pip install 'fuse-export[openvino]')"
    return True, ""


def _native_bf16() -> tuple[bool, str]:
    from fuse_export.cpuinfo import bf16_status

    return bf16_status()


def _openvino_bf16() -> tuple[bool, str]:
    ok, why = _openvino()
    return _native_bf16() if ok else (ok, why)


def _torch_bf16() -> tuple[bool, str]:
    ok, why = _torch()
    return _native_bf16() if ok else (ok, why)


def _openvino_as(label: str, precision: str) -> Callable[..., Runner]:
    """The OpenVINO CPU runner at one explicit inference precision (fp32 / bf16 on the fp32 IR, int8 IR)."""

    def factory(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None,
                embed: bool) -> Runner:
        from fuse_export.runners.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(artifact, pre, precision, threads=threads, embed_preprocessing=embed, label=label)

    return factory


def _eager_bf16(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None,
                embed: bool) -> Runner:
    from fuse_export.runners.torch_runners import EagerBf16Runner

    return EagerBf16Runner(checkpoint, pre, threads=threads, embed_preprocessing=embed, label="pytorch-bf16")


def _aoti() -> tuple[bool, str]:
    import importlib.metadata as md

    try:
        major, minor = (int(p) for p in md.version("torch").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return False, "torch not installed"
    if (major, minor) < (2, 6):
        return False, f"torch {major}.{minor} cannot load AOTInductor packages (needs torch >= 2.6)"
    return True, ""


def _pt2(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None, embed: bool) -> Runner:
    from fuse_export.runners.pt2_runner import Pt2Runner

    return Pt2Runner(artifact, pre, threads=threads, embed_preprocessing=embed, label="pt2")


def _executorch_available() -> tuple[bool, str]:
    if not _has("executorch"):
        return False, ("executorch not installed (pip install 'fuse-export[executorch]' in an environment of its "
                       "own: it needs numpy >= 2)")
    return True, ""


def _executorch_as(label: str) -> Callable[..., Runner]:
    """The ExecuTorch runner under a label (the int8 program runs on the same runtime)."""

    def factory(artifact: Path | None, checkpoint: Path, pre: Preprocessing, threads: int | None,
                embed: bool) -> Runner:
        from fuse_export.runners.executorch_runner import ExecuTorchRunner

        return ExecuTorchRunner(artifact, pre, threads=threads, embed_preprocessing=embed, label=label)

    return factory


BACKENDS: dict[str, Backend] = {
    b.key: b
    for b in (
        Backend("pytorch", "PyTorch", None, "cpu", "fp32", _torch, _eager),
        Backend("torchscript", "TorchScript", "torchscript", "cpu", "fp32", _torch, _torchscript),
        Backend("onnxruntime", "ONNX Runtime", "onnx", "cpu", "fp32", _onnxruntime_cpu, _ort_cpu),
        Backend("onnxruntime-fp16", "ONNX Runtime fp16", "onnx", "cpu", "fp16", _onnxruntime_cpu,
                _ort_cpu_as("onnxruntime-fp16")),
        Backend("onnxruntime-int8", "ONNX Runtime int8", "onnx", "cpu", "int8", _onnxruntime_cpu,
                _ort_cpu_as("onnxruntime-int8")),
        Backend("pt2", "AOTInductor (pt2)", "pt2", "cpu", "fp32", _aoti, _pt2),
        Backend("executorch", "ExecuTorch (XNNPACK)", "executorch", "cpu", "fp32", _executorch_available,
                _executorch_as("executorch")),
        Backend("executorch-int8", "ExecuTorch int8 (XNNPACK)", "executorch", "cpu", "int8", _executorch_available,
                _executorch_as("executorch-int8")),
        Backend("pytorch-bf16", "PyTorch bf16 (autocast)", None, "cpu", "bf16", _torch_bf16, _eager_bf16),
        Backend("openvino", "OpenVINO", "openvino", "cpu", "fp32", _openvino, _openvino_as("openvino", "fp32")),
        Backend("openvino-bf16", "OpenVINO bf16", "openvino", "cpu", "bf16", _openvino_bf16,
                _openvino_as("openvino-bf16", "bf16"), artifact_precision="fp32"),
        Backend("openvino-int8", "OpenVINO int8", "openvino", "cpu", "int8", _openvino,
                _openvino_as("openvino-int8", "int8")),
    )
}
# The CUDA and TensorRT rows live beside their runners; they skip with a reason where unusable.
BACKENDS.update({row[0]: Backend(*row) for row in gpu_backend_rows()})
REFERENCE = "pytorch"


def backend_for(fmt: str, precision: str, device: str = "cpu") -> Backend:
    """The backend that runs (and verifies) a format's artifact of one precision on `device`."""
    for b in BACKENDS.values():
        if b.format == fmt and b.precision == precision and b.device == device:
            return b
    raise UserError(f"no {device} backend runs {fmt} {precision} artifacts")


def parse_backends(text: str | None) -> list[Backend]:
    """Comma-separated backend keys; when empty, every CPU backend plus the CUDA ones where CUDA is usable
    (named backends are always kept, and show as skipped with the reason when they cannot run here)."""
    if not text:
        from fuse_export.runners.cuda_base import cuda_status

        return [b for b in BACKENDS.values() if b.device == "cpu" or cuda_status()[0]]
    out = []
    for key in (t.strip().lower() for t in text.split(",") if t.strip()):
        if key not in BACKENDS:
            raise UserError(f"--backends: unknown backend {key!r}; choose from {', '.join(BACKENDS)}")
        out.append(BACKENDS[key])
    return out
