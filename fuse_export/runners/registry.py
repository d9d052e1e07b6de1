"""The backend table: which runner executes which artifact, and whether it can run here (and why not)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuse_export.contract import Preprocessing
from fuse_export.errors import UserError
from fuse_export.runners.base import Runner


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _always() -> tuple[bool, str]:
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


BACKENDS: dict[str, Backend] = {
    b.key: b
    for b in (
        Backend("pytorch", "PyTorch", None, "cpu", "fp32", _always, _eager),
        Backend("torchscript", "TorchScript", "torchscript", "cpu", "fp32", _always, _torchscript),
        Backend("onnxruntime", "ONNX Runtime", "onnx", "cpu", "fp32", _onnxruntime_cpu, _ort_cpu),
    )
}
REFERENCE = "pytorch"


def parse_backends(text: str | None) -> list[Backend]:
    """Comma-separated backend keys, or all when empty."""
    if not text:
        return list(BACKENDS.values())
    out = []
    for key in (t.strip().lower() for t in text.split(",") if t.strip()):
        if key not in BACKENDS:
            raise UserError(f"--backends: unknown backend {key!r}; choose from {', '.join(BACKENDS)}")
        out.append(BACKENDS[key])
    return out
