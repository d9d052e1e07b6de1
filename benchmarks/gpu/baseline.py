"""The plain torchvision ResNet-18 that the fused rows are compared with, as a runner with the same numerics
switches (TF32 off, cuDNN autotuning on, layout, precision, eager or CUDA graph) so the report can print both."""

from __future__ import annotations

from typing import Any

from fuse_export.contract import Preprocessing
from fuse_export.runners.cuda_runners import TorchCudaBase

# (row label, precision, channels_last, mode): eager fp32 is what a user gets first; the CUDA-graph fp16 row is
# the best plain variant of shared/reference/measured-baselines.md (0.359 ms at batch 1 on the H200).
VARIANTS = [("resnet18 eager fp32", "fp32", True, "eager"), ("resnet18 CUDA graph fp16", "fp16", True, "graph")]


class PlainResNet18Runner(TorchCudaBase):
    """torchvision `resnet18(num_classes=C)`, random weights (timing does not depend on them), no BN folding."""

    backend = "resnet18-baseline"

    def __init__(self, pre: Preprocessing, precision: str = "fp32", channels_last: bool = True, **kw: Any) -> None:
        super().__init__(pre, **kw)
        self.precision, self.channels_last = precision, channels_last

    def _load(self) -> None:
        import torch
        import torchvision

        self._numerics()
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        net = torchvision.models.resnet18(weights=None, num_classes=self.pre.num_classes)
        net = net.eval().to(self.device, dtype=dtype, memory_format=fmt)

        class Plain(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
                return (self.net(x.to(dtype=dtype, memory_format=fmt)).float(),)

        self._finish(Plain().eval())
