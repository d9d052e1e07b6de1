"""CUDA runners: PyTorch (fp32/fp16/bf16, channels_last, CUDA graphs, torch.compile), TorchScript, and
ONNX Runtime's CUDA and TensorRT execution providers with I/O binding (inputs and outputs stay on the GPU).

Reduced precision in PyTorch applies to the ResNet-18 trunk only: the heads, the SCN sigmoid, the softmaxes
and the stacker get fp32 features and stay fp32. The heads' class probabilities can differ by 1e-3 for an
uncertain face, which fp16/bf16 rounding before the stacker would turn into flipped predictions; the heads
are a few kilo-FLOPs, so keeping them fp32 costs nothing measurable.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.cuda_base import CudaRunner, torch_dtype

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


class _TorchCuda(CudaRunner):
    """Shared by eager PyTorch and TorchScript on CUDA: numerics settings, CUDA graphs, torch.compile."""

    def __init__(self, pre: Preprocessing, mode: str = "eager", compile_mode: str = "reduce-overhead", **kw) -> None:
        super().__init__(pre, **kw)
        if mode not in TORCH_MODES:
            raise ValueError(f"mode {mode!r}: choose from {TORCH_MODES}")
        self.mode, self.compile_mode = mode, compile_mode
        self.fn: Any = None
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
        if self._saved:
            torch.backends.cudnn.allow_tf32 = self._saved["cudnn_tf32"]
            torch.backends.cuda.matmul.allow_tf32 = self._saved["matmul_tf32"]
            torch.backends.cudnn.benchmark = self._saved["benchmark"]
        torch.cuda.empty_cache()


class TorchCudaRunner(_TorchCuda):
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
        from fuse_export.train.checkpoint import load_model

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


class TorchScriptCudaRunner(_TorchCuda):
    """A TorchScript artifact (traced and frozen on CPU) loaded onto the GPU, fp32."""

    backend = "torchscript-cuda"

    def __init__(self, path: str | Path, pre: Preprocessing, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)

    def _load(self) -> None:
        from fuse_export.export.to_torchscript import load_torchscript

        self._numerics()
        module, _ = load_torchscript(self.path, str(self.device))
        self._finish(module)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}
ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtGpuRunner(CudaRunner):
    """ONNX Runtime on the GPU (CUDA or TensorRT execution provider), fed and read through I/O binding."""

    backend = "onnxruntime-cuda"

    def __init__(self, path: str | Path, pre: Preprocessing, provider: str = "cuda", precision: str = "fp32",
                 profile=None, workspace_gb: float = 4.0, opt_level: int = 3, **kw) -> None:
        super().__init__(pre, **kw)
        self.path, self.provider, self.precision = Path(path), provider, precision
        self.profile, self.workspace_gb, self.opt_level = profile, workspace_gb, opt_level
        self.session = None
        self._binding: tuple | None = None
        self._outs: dict[int, dict[str, Any]] = {}

    def _cuda_options(self) -> dict[str, str]:
        opts = {"device_id": str(self.device.index or 0), "cudnn_conv_algo_search": "EXHAUSTIVE",
                "cudnn_conv_use_max_workspace": "1", "do_copy_in_default_stream": "1"}
        if self.precision == "fp32":
            opts["use_tf32"] = "0"  # as for PyTorch: exact fp32 convolutions for 1e-4 parity
        return opts

    def _trt_options(self, ort_version: str) -> dict[str, str]:
        from fuse_export.export.onnx_inspect import inspect_onnx
        from fuse_export.export.trt_api import TrtApi
        from fuse_export.export.trt_engine import cache_root, current_gpu, default_profile, ort_trt_cache_dir
        from fuse_export.fileio import sha256_file

        info = inspect_onnx(self.path)
        profile = self.profile or default_profile(info)
        shapes = [f"{info.input_name}:{'x'.join(map(str, s))}" for s in profile.shapes(info.input_dims)]
        try:
            api: TrtApi | None = TrtApi.installed()
        except BackendUnavailable:
            api = None  # TensorRT libraries without the Python package: version unknown
        version = api.version if api else "unknown"
        root = cache_root()
        engines = ort_trt_cache_dir(root, sha256_file(self.path), ort_version, version, current_gpu(),
                                    self.precision, profile)
        engines.mkdir(parents=True, exist_ok=True)
        opts = {"device_id": str(self.device.index or 0),
                "trt_max_workspace_size": str(int(self.workspace_gb * (1 << 30))),
                "trt_builder_optimization_level": str(self.opt_level),
                "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engines),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(root / "ort-trt"),
                "trt_profile_min_shapes": shapes[0], "trt_profile_opt_shapes": shapes[1],
                "trt_profile_max_shapes": shapes[2]}
        # An fp16 ONNX on TensorRT 10 (weak typing) still needs the FP16 flag to pick fp16 kernels; on 11 the
        # flag is gone and strong typing takes the ONNX's types.
        if self.precision == "fp16" and (api is None or api.ort_trt_fp16_option):
            opts["trt_fp16_enable"] = "True"
        return opts

    def _load(self) -> None:
        from fuse_export.runners.ort_runner import import_onnxruntime

        ort = import_onnxruntime()
        wanted = ORT_PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime {ort.__version__} has no {wanted} (has "
                                     f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        providers: list[Any] = [("CUDAExecutionProvider", self._cuda_options())]
        if self.provider == "tensorrt":  # CUDA stays registered as the fallback for nodes TensorRT rejects
            providers.insert(0, ("TensorrtExecutionProvider", self._trt_options(ort.__version__)))
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        used = self.session.get_providers()
        if used[0] != wanted:  # ORT falls back silently (e.g. TensorRT libraries missing): refuse to mislabel
            raise BackendUnavailable(f"onnxruntime could not enable {wanted} (session uses {', '.join(used)})")
        inp = self.session.get_inputs()[0]
        self._in_name, self._in_dtype = inp.name, _ORT_TYPES[inp.type]
        self._out_dtypes = {o.name: _ORT_TYPES[o.type] for o in self.session.get_outputs()}

    def _outputs(self, n: int) -> dict[str, Any]:
        import torch

        if n not in self._outs:
            self._outs[n] = {s.name: torch.empty(s.shape(n, self.pre.num_classes, self.pre.image_size),
                                                 dtype=torch_dtype(self._out_dtypes[s.name]), device=self.device)
                             for s in self.contract.outputs}
        return self._outs[n]

    def run_device(self, x):
        import torch

        x = x.to(torch_dtype(self._in_dtype)).contiguous()
        # ONNX Runtime reads the input on its own stream: make the writes queued on torch's stream visible first.
        torch.cuda.current_stream().synchronize()
        n = int(x.shape[0])
        outs = self._outputs(n)
        key = (n, x.data_ptr())
        if self._binding is None or self._binding[0] != key:  # rebinding costs microseconds; reuse when we can
            idx = self.device.index or 0
            b = self.session.io_binding()
            b.bind_input(self._in_name, "cuda", idx, np.dtype(self._in_dtype), tuple(x.shape), x.data_ptr())
            for name, t in outs.items():
                b.bind_output(name, "cuda", idx, np.dtype(self._out_dtypes[name]), tuple(t.shape), t.data_ptr())
            self._binding = (key, b, x)  # keep x alive while its pointer is bound
        self.session.run_with_iobinding(self._binding[1])  # returns when the outputs are written
        return tuple(outs[name] for name in self.contract.output_names)

    def _deactivate(self) -> None:
        self.session, self._binding = None, None
        self._outs.clear()
