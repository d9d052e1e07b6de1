"""CUDA runners of PyTorch (fp32/fp16/bf16, channels_last, CUDA graphs, torch.compile) and TorchScript
(ONNX Runtime's CUDA and TensorRT execution providers are in ort_gpu_runner.py).

Reduced precision in PyTorch applies to the ResNet-18 trunk only: the heads, the SCN sigmoid, the softmaxes
and the stacker get fp32 features and stay fp32. The heads' class probabilities can differ by 1e-3 for an
uncertain face, which fp16/bf16 rounding before the stacker would turn into flipped predictions; the heads
are a few kilo-FLOPs, so keeping them fp32 costs nothing measurable.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.cuda_base import CudaRunner

TORCH_MODES = ("eager", "graph", "compile")


def fold_batchnorm(module) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d registered just before it (ResNet's conv1/bn1,
    conv2/bn2, downsample.0/.1 order); returns how many. One kernel less per convolution at batch 1, where
    launches are the cost; exact up to float rounding (the parity check against eager fp32 confirms it)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(parent, bn_name, torch.nn.Identity())
                folded += 1
    return folded


def _trunk_wrapper(trunk, dtype, channels_last: bool):
    """The trunk in `dtype` (and channels_last), taking any float input and returning fp32 features."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format

    class ReducedTrunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk.to(dtype=dtype, memory_format=fmt)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.trunk(x.to(dtype=dtype, memory_format=fmt)).float()

    return ReducedTrunk()


class TorchCudaBase(CudaRunner):
    """Shared by eager PyTorch, TorchScript (and the benchmark's plain ResNet-18) on CUDA: numerics settings,
    CUDA graphs, torch.compile."""

    precision = "fp32"
    channels_last = False
    fold_bn = False

    def __init__(self, pre: Preprocessing, mode: str = "eager", compile_mode: str = "reduce-overhead", **kw) -> None:
        super().__init__(pre, **kw)
        if mode not in TORCH_MODES:
            raise ValueError(f"mode {mode!r}: choose from {TORCH_MODES}")
        self.mode, self.compile_mode = mode, compile_mode
        self.fn: Any = None
        self.module: Any = None
        self._graphs: dict[tuple, tuple] = {}
        self._saved: dict[str, Any] = {}

    def _numerics(self) -> None:
        import torch

        # TF32 convolutions (cuDNN's default) round fp32 to 10-bit mantissas: off, so fp32 parity is 1e-4-tight.
        # cudnn.benchmark picks the fastest kernels per input shape (our shapes repeat).
        self._saved = {"cudnn_tf32": torch.backends.cudnn.allow_tf32,
                       "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                       "benchmark": torch.backends.cudnn.benchmark}
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    def numerics(self) -> dict[str, Any]:
        import torch

        return {"precision": self.precision, "mode": self.mode + (f" ({self.compile_mode})" if self.mode == "compile"
                                                                 else ""),
                "layout": "channels_last" if self.channels_last else "NCHW", "batchnorm_folded": self.fold_bn,
                "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_autotune": torch.backends.cudnn.benchmark}

    def _finish(self, module) -> None:
        import torch

        self.module = module
        if self.mode == "compile":
            self.fn = torch.compile(module, mode=self.compile_mode, dynamic=False)
        else:
            self.fn = module

    def run_device(self, x):
        import torch

        with torch.no_grad():
            if self.mode == "graph":
                return self._replay(x)
            if self.mode == "compile" and "reduce-overhead" in self.compile_mode:
                torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs may go
            return self.fn(x)

    def _replay(self, x):
        """Capture once per input shape (after warm-up on a side stream), then copy in and replay."""
        import torch

        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # cuDNN autotuning and lazy allocations happen here, outside the capture
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _deactivate(self) -> None:
        import torch

        self.fn = self.module = None
        self._graphs.clear()
        if self._saved:  # also reached when _load failed half-way (CudaRunner._activate)
            torch.backends.cudnn.allow_tf32 = self._saved["cudnn_tf32"]
            torch.backends.cuda.matmul.allow_tf32 = self._saved["matmul_tf32"]
            torch.backends.cudnn.benchmark = self._saved["benchmark"]
            self._saved = {}
        torch.cuda.empty_cache()


class TorchCudaRunner(TorchCudaBase):
    """The fused model from its checkpoint on CUDA: batch norms folded into the convolutions, the trunk in
    fp32/fp16/bf16 and channels_last; eager, a CUDA graph per batch size, or torch.compile."""

    backend = "pytorch-cuda"

    def __init__(self, checkpoint: str | Path, pre: Preprocessing, precision: str = "fp32",
                 channels_last: bool = True, fold_bn: bool = True, **kw) -> None:
        super().__init__(pre, **kw)
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision {precision!r}: choose fp32, fp16 or bf16")
        self.checkpoint, self.precision, self.channels_last = Path(checkpoint), precision, channels_last
        self.fold_bn = fold_bn

    def _load(self) -> None:
        import torch

        from fuse_export.model.fused import ExportView
        from fuse_export.training.checkpoint import load_model

        self._numerics()
        if self.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BackendUnavailable(f"{torch.cuda.get_device_name(self.device)} has no bf16 support")
        loaded = load_model(self.checkpoint)
        model = copy.deepcopy(loaded.model).eval()
        self.folded_batchnorms = fold_batchnorm(model) if self.fold_bn else 0
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        if dtype != torch.float32 or self.channels_last:
            model.backbone = _trunk_wrapper(model.backbone, dtype, self.channels_last)
            if model.scn_backbone is not None:
                model.scn_backbone = _trunk_wrapper(model.scn_backbone, dtype, self.channels_last)
        embed = self.contract.layout == "uint8-nhwc"
        self._finish(ExportView(model, loaded.preprocessing if embed else None).eval().to(self.device))


class TorchScriptCudaRunner(TorchCudaBase):
    """A TorchScript artifact (traced and frozen on CPU) loaded onto the GPU, fp32."""

    backend = "torchscript-cuda"
    fold_bn = "by torch.jit.freeze"  # type: ignore[assignment]  # freezing folds conv-bn pairs

    def __init__(self, path: str | Path, pre: Preprocessing, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)

    def _load(self) -> None:
        from fuse_export.exporters.to_torchscript import load_torchscript

        self._numerics()
        module, _ = load_torchscript(self.path, str(self.device))
        self._finish(module)
