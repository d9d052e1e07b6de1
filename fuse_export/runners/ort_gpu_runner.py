"""ONNX Runtime on the GPU: the CUDA and TensorRT execution providers, fed and read through I/O binding
(inputs and outputs stay in GPU memory, in torch tensors)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.cuda_base import CudaRunner, torch_dtype

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
        self._tf32_override: str | None = None
        self._binding: tuple | None = None
        self._outs: dict[int, dict[str, Any]] = {}

    def _cuda_options(self) -> dict[str, str]:
        opts = {"device_id": str(self.device.index or 0), "cudnn_conv_algo_search": "EXHAUSTIVE",
                "cudnn_conv_use_max_workspace": "1", "do_copy_in_default_stream": "1"}
        if self.precision == "fp32":
            opts["use_tf32"] = "0"  # as for PyTorch: exact fp32 convolutions for 1e-4 parity
        return opts

    def _trt_options(self, ort_version: str) -> dict[str, str]:
        from fuse_export.exporters.onnx_inspect import inspect_onnx
        from fuse_export.exporters.trt_api import TrtApi
        from fuse_export.exporters.trt_engine import cache_root, current_gpu, default_profile, ort_trt_cache_dir
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
        if self.provider == "tensorrt" and self.precision == "fp32":
            # TensorRT builds fp32 engines with TF32 tactics unless told otherwise, and ORT's TensorRT EP has no
            # option for it; NVIDIA's documented switch is this variable, read when the CUDA libraries start
            # (gpu_check sets it for the whole subprocess; here it helps when nothing has started them yet).
            os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
        self._tf32_override = os.environ.get("NVIDIA_TF32_OVERRIDE")
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

    def numerics(self) -> dict[str, Any]:
        tf32 = {"cuda": self.precision != "fp32", "tensorrt": self._tf32_override != "0"}[self.provider]
        return {"precision": self.precision, "mode": f"ORT {ORT_PROVIDERS[self.provider]}", "layout": "NCHW",
                "tf32_conv": tf32, "tf32_matmul": tf32, "cudnn_autotune": "EXHAUSTIVE" if self.provider == "cuda"
                else "TensorRT tactics", "NVIDIA_TF32_OVERRIDE": self._tf32_override}

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
