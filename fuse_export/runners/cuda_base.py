"""The device-resident runner interface every CUDA backend implements, and the CUDA availability check.

A `CudaRunner` still answers `infer(numpy feed)` like every runner (host in, host out), and in addition
`run_device(x)`: a CUDA tensor in, CUDA tensors out, enqueued on the current stream. GPU timing
(compare/gpu_timing.py) uses `run_device` to time the device work alone or with pinned-memory copies.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.base import Runner


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, why not): torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False, "torch not installed"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, ""


def cuda_device(name: str | int = "cuda"):
    """A `torch.device` with an index: "cuda" (no index) means the current device. `torch.cuda.set_device`
    and per-device queries refuse a CUDA device without an index."""
    import torch

    dev = torch.device("cuda", name) if isinstance(name, int) else torch.device(name)
    if dev.type != "cuda":
        raise ValueError(f"{name!r} is not a CUDA device")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def require_cuda() -> None:
    ok, why = cuda_status()
    if not ok:
        raise BackendUnavailable(why)


def check_device(device: str | None, option: str = "--device") -> None:
    """Refuse a CUDA device this machine lacks ("cuda" without CUDA, "cuda:7" with fewer GPUs), before any work:
    otherwise a command would run on the CPU instead, or fail deep inside a runner. `device` is parsed already
    (fuse_export.exporters.options.parse_device); None and "cpu" pass."""
    if not device or not device.startswith("cuda"):
        return
    ok, why = cuda_status()
    if not ok:
        raise BackendUnavailable(f"{option} {device}: {why}; leave {option} out to run on the CPU")
    import torch

    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise BackendUnavailable(f"{option} {device}: this machine has {count} CUDA device(s), "
                                 f"cuda:0..cuda:{count - 1}; choose one of them")


def torch_dtype(name: str):
    """Contract/ONNX dtype names -> torch dtypes."""
    import torch

    return {"float32": torch.float32, "float": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
            "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32, "int64": torch.int64}[name]


class CudaRunner(Runner):
    """A runner whose model lives on a CUDA device."""

    def __init__(self, pre: Preprocessing, device: str = "cuda", **kw) -> None:
        super().__init__(pre, **kw)
        self.device_name = device  # "cuda" = the current device; --device cuda:N picks another (bench.make_runner)
        self.device = None  # torch.device, set on activate (constructing a runner imports nothing heavy)

    def _activate(self) -> None:
        require_cuda()
        self.device = cuda_device(self.device_name)
        import torch

        torch.cuda.set_device(self.device)
        try:
            self._load()
        except BaseException:
            # activate() failed, so __exit__/deactivate() will never run: restore the global settings
            # (TF32, cuDNN autotuning) a partial load changed, and free what it allocated, right here.
            self._deactivate()
            raise

    def numerics(self) -> dict[str, Any]:
        """The settings that decide this runner's arithmetic (precision, TF32, autotuning, layout), for reports."""
        return {}

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the model onto `self.device` (CUDA is known to be usable here)."""

    @abc.abstractmethod
    def run_device(self, x):
        """Enqueue the model on the current stream for CUDA tensor `x`; return its CUDA outputs in contract
        order. Outputs may be reused buffers: consume them before the next call."""

    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        x = torch.from_numpy(image).to(self.device)
        outs = self.run_device(x)
        return tuple(o.float().cpu().numpy() for o in outs)  # .cpu() synchronizes the stream
