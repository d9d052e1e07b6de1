"""The CUDA and TensorRT rows of the backend table (runners/registry.py adds them to BACKENDS).

Each row has an availability check that says exactly what is missing here (no CUDA device, onnxruntime-gpu
not installed, TensorRT not installed, an unsupported version), so `bench` shows it as skipped with that
reason and `doctor` lists it. Nothing heavy is imported until a runner is activated.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.base import Runner
from fuse_export.runners.cuda_base import cuda_status


def _combine(*checks: tuple[bool, str]) -> tuple[bool, str]:
    reasons = [why for ok, why in checks if not ok]
    return (not reasons), "; ".join(reasons)


@functools.lru_cache(maxsize=1)
def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not) for the TensorRT Python package: installed, importable, a supported major version."""
    from fuse_export.exporters.trt_api import TrtApi, import_tensorrt

    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT not installed (pip install tensorrt)"
    try:
        TrtApi.from_version(import_tensorrt().__version__)
    except BackendUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # a broken install (missing libnvinfer) raises all sorts of things on import
        return False, f"TensorRT fails to import ({type(exc).__name__}: {exc})"
    return True, ""


@functools.lru_cache(maxsize=1)
def _tensorrt_libraries() -> tuple[bool, str]:
    """ONNX Runtime's TensorRT EP loads libnvinfer itself; the Python package is one way to have it."""
    if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_libs"):
        return True, ""
    for name in ("libnvinfer.so.11", "libnvinfer.so.10"):
        try:
            ctypes.CDLL(name)
            return True, ""
        except OSError:
            continue
    return False, "TensorRT not installed (libnvinfer not found; pip install tensorrt)"


@functools.lru_cache(maxsize=4)
def ort_provider_status(provider: str) -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime-gpu not installed"
    import onnxruntime as ort

    have = ort.get_available_providers()
    if provider not in have:
        return False, f"onnxruntime-gpu not installed (onnxruntime {ort.__version__} has no {provider})"
    return True, ""


def _cuda() -> tuple[bool, str]:
    return cuda_status()


def _bf16() -> tuple[bool, str]:
    ok, why = cuda_status()
    if not ok:
        return ok, why
    import torch

    return (True, "") if torch.cuda.is_bf16_supported() else (False, "this GPU has no bf16 support")


def _compile() -> tuple[bool, str]:
    triton = (True, "") if importlib.util.find_spec("triton") else (
        False, "triton not installed (torch.compile's CUDA backend needs it)")
    # Triton compiles its small CUDA launcher module with the system C compiler on first use.
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    compiler = (True, "") if cc else (False, "no C compiler (Triton builds its CUDA launcher with one; set CC)")
    return _combine(triton, compiler, cuda_status())


def _ort_cuda() -> tuple[bool, str]:
    return _combine(ort_provider_status("CUDAExecutionProvider"), cuda_status())


def _ort_trt() -> tuple[bool, str]:
    return _combine(ort_provider_status("TensorrtExecutionProvider"), _tensorrt_libraries(), cuda_status())


def _tensorrt() -> tuple[bool, str]:
    return _combine(tensorrt_status(), cuda_status())


Factory = Callable[[Path | None, Path, Preprocessing, "int | None", bool], Runner]


def _torch(key: str, precision: str, mode: str = "eager") -> Factory:
    def make(artifact, checkpoint, pre, threads, embed) -> Runner:
        from fuse_export.runners.cuda_runners import TorchCudaRunner

        return TorchCudaRunner(checkpoint, pre, precision=precision, mode=mode, embed_preprocessing=embed, label=key)
    return make


def _torchscript(key: str) -> Factory:
    def make(artifact, checkpoint, pre, threads, embed) -> Runner:
        from fuse_export.runners.cuda_runners import TorchScriptCudaRunner

        return TorchScriptCudaRunner(artifact, pre, embed_preprocessing=embed, label=key)
    return make


def _ort(key: str, provider: str, precision: str) -> Factory:
    def make(artifact, checkpoint, pre, threads, embed) -> Runner:
        from fuse_export.runners.ort_gpu_runner import OrtGpuRunner

        return OrtGpuRunner(artifact, pre, provider=provider, precision=precision, embed_preprocessing=embed,
                            label=key)
    return make


def _trt(key: str, cuda_graph: bool = False) -> Factory:
    def make(artifact, checkpoint, pre, threads, embed) -> Runner:
        from fuse_export.runners.trt_runner import TensorRTRunner

        return TensorRTRunner(artifact, pre, cuda_graph=cuda_graph, embed_preprocessing=embed, label=key)
    return make


def gpu_backend_rows() -> list[tuple]:
    """(key, title, format, device, precision, availability, factory) per CUDA/TensorRT backend."""
    rows = [
        ("pytorch-cuda", "PyTorch CUDA", None, "fp32", _cuda, _torch, ("fp32",)),
        ("pytorch-cuda-fp16", "PyTorch CUDA fp16", None, "fp16", _cuda, _torch, ("fp16",)),
        ("pytorch-cuda-bf16", "PyTorch CUDA bf16", None, "bf16", _bf16, _torch, ("bf16",)),
        ("pytorch-cuda-graph-fp16", "PyTorch CUDA graph fp16", None, "fp16", _cuda, _torch, ("fp16", "graph")),
        ("pytorch-compile-fp16", "torch.compile fp16", None, "fp16", _compile, _torch, ("fp16", "compile")),
        ("torchscript-cuda", "TorchScript CUDA", "torchscript", "fp32", _cuda, _torchscript, ()),
        ("onnxruntime-cuda", "ORT CUDA EP", "onnx", "fp32", _ort_cuda, _ort, ("cuda", "fp32")),
        ("onnxruntime-cuda-fp16", "ORT CUDA EP fp16", "onnx", "fp16", _ort_cuda, _ort, ("cuda", "fp16")),
        ("onnxruntime-trt", "ORT TensorRT EP", "onnx", "fp32", _ort_trt, _ort, ("tensorrt", "fp32")),
        ("onnxruntime-trt-fp16", "ORT TensorRT EP fp16", "onnx", "fp16", _ort_trt, _ort, ("tensorrt", "fp16")),
        ("tensorrt", "TensorRT", "tensorrt", "fp32", _tensorrt, _trt, ()),
        ("tensorrt-fp16", "TensorRT fp16", "tensorrt", "fp16", _tensorrt, _trt, ()),
        ("tensorrt-int8", "TensorRT int8", "tensorrt", "int8", _tensorrt, _trt, ()),
        ("tensorrt-fp16-graph", "TensorRT fp16 CUDA graph", "tensorrt", "fp16", _tensorrt, _trt, (True,)),
    ]
    return [(key, title, fmt, "cuda", prec, avail, make(key, *args))
            for key, title, fmt, prec, avail, make, args in rows]
