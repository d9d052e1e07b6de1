"""Speed settings for training on a GPU, all from the recipe's [train] section: mixed precision (bf16, or fp16
with a gradient scaler), channels_last memory format, cudnn autotuning and optional `torch.compile`.

They also run on the CPU (bf16/fp16 autocast and the CPU GradScaler exist there), which is how the tests
exercise them; they only pay off on a GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fuse_export.errors import BackendUnavailable

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """Autocast settings plus the gradient scaler (a disabled pass-through unless amp is fp16)."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """backward + step + scaler update; with fp16 a step whose gradients overflowed is skipped."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def make_precision(amp: str, device: torch.device) -> Precision:
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, not {amp!r}")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BackendUnavailable(f"train.amp = 'bf16' but {torch.cuda.get_device_name(device)} has no bfloat16; "
                                 "use 'fp16'")
    # bf16 has fp32's exponent range, so only fp16 needs loss scaling.
    return Precision(device.type, AMP_DTYPES[amp], torch.amp.GradScaler(device.type, enabled=amp == "fp16"))


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cudnn autotuning for speed, or deterministic kernels for bit-reproducible GPU runs (slower)."""
    if deterministic:
        # cuBLAS reads this when it first initializes; it must be set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic CUDA kernel is reported by a warning naming it, rather
        # than stopping a long run (the run is then not bit-reproducible, and the warning says why).
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def to_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """NHWC weights let cudnn pick tensor-core kernels without layout transposes (with AMP on recent GPUs)."""
    return module.to(memory_format=torch.channels_last) if channels_last else module


def batch_to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile the (DDP-wrapped) training module; DDP + compile is PyTorch's documented pairing."""
    return torch.compile(module) if enabled else module  # type: ignore[return-value]
