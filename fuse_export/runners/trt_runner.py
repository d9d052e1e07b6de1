"""Native TensorRT runner: a raw plan deserialized with the TensorRT runtime, buffers owned by torch.

No pycuda and no cuda-python: inputs and outputs are torch CUDA tensors whose `data_ptr()` is handed to
`set_tensor_address`, the batch is set with `set_input_shape`, and `execute_async_v3` runs on torch's current
stream (so CUDA events and copies on that stream order correctly). With `cuda_graph=True`, each batch size
gets its own execution context, one warm-up enqueue (TensorRT's shape-dependent setup must happen outside a
capture), and a captured CUDA graph that later calls replay. The same code serves TensorRT 10 and 11.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fuse_export.contract import Preprocessing
from fuse_export.errors import InputError
from fuse_export.exporters.trt_engine import EngineMismatch
from fuse_export.runners.cuda_base import CudaRunner


class TensorRTRunner(CudaRunner):
    backend = "tensorrt"

    def __init__(self, path: str | Path, pre: Preprocessing, cuda_graph: bool = False, **kw) -> None:
        super().__init__(pre, **kw)
        self.path, self.cuda_graph = Path(path), cuda_graph
        self.engine = self.context = None
        self._contexts: dict[int, tuple] = {}  # batch -> (context, input buffer, outputs, graph)
        self._bound: tuple | None = None  # (batch, input tensor, outputs) of the plain context

    def _load(self) -> None:
        from fuse_export.exporters.trt_api import import_tensorrt
        from fuse_export.exporters.trt_engine import check_engine, current_gpu, read_sidecar

        trt = import_tensorrt()
        sidecar = read_sidecar(self.path)
        self._sidecar = sidecar or {}
        if sidecar is not None:  # fail with a rebuild message before TensorRT fails with a magic-tag error
            check_engine(self.path, sidecar, trt.__version__, current_gpu(self.device.index or 0))
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this plan (built by "
                                 "another TensorRT version or for another GPU?); rebuild it here with "
                                 "`fuse-export build-engine`")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != self.contract.input_names or not set(self.contract.output_names) <= set(outputs):
            raise EngineMismatch(f"{self.path}: engine I/O {inputs} -> {outputs} does not match the contract "
                                 f"{self.contract.input_names} -> {self.contract.output_names}")
        self._dtypes = {n: self._torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._outputs_all = outputs
        lo, _, hi = self.engine.get_tensor_profile_shape(inputs[0], 0)
        self.batch_range = (int(lo[0]), int(hi[0]))
        self.context = self.engine.create_execution_context()

    def numerics(self) -> dict[str, Any]:
        build = getattr(self, "_sidecar", {}).get("build", {})
        tf32 = "unknown (no sidecar)" if not build else "TF32" not in build.get("clear_flags", [])
        return {"precision": build.get("precision", "unknown"), "mode": "TensorRT" + (" + CUDA graph" if self.cuda_graph
                                                                                     else ""),
                "layout": "NCHW in (TensorRT picks internal formats)", "tf32_conv": tf32, "tf32_matmul": tf32,
                "cudnn_autotune": "TensorRT tactic timing at build", "strongly_typed": build.get("strongly_typed"),
                "build_s": getattr(self, "_sidecar", {}).get("build_seconds")}

    @staticmethod
    def _torch_dtype(trt, dt) -> Any:
        import torch

        names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
                 "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}
        for name, torch_dt in names.items():  # trt.float32 etc. are DataType aliases; not every one in every release
            if getattr(trt, name, None) == dt:
                return torch_dt
        raise EngineMismatch(f"engine tensor type {dt} has no torch equivalent here")

    def _bind(self, context, x) -> dict[str, Any]:
        """Set the input shape and every tensor address; allocate outputs at the shapes TensorRT reports."""
        import torch

        name = self.contract.input_names[0]
        if not context.set_input_shape(name, tuple(x.shape)):
            raise InputError(f"{self.path}: TensorRT refused input shape {tuple(x.shape)}")
        context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for out in self._outputs_all:
            outs[out] = torch.empty(tuple(context.get_tensor_shape(out)), dtype=self._dtypes[out], device=self.device)
            context.set_tensor_address(out, outs[out].data_ptr())
        return outs

    def _enqueue(self, context) -> None:
        import torch

        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execute_async_v3 failed")

    def run_device(self, x):
        n = int(x.shape[0])
        lo, hi = self.batch_range
        if not lo <= n <= hi:
            raise InputError(f"{self.label}: batch {n} is outside the engine's profile {lo}..{hi}; rebuild it with "
                             f"`fuse-export build-engine --batch MIN:OPT:MAX`")
        x = x.to(self._dtypes[self.contract.input_names[0]]).contiguous()
        if self.cuda_graph:
            return self._replay(x)
        bound = self._bound
        if bound is None or bound[0] != n:  # a new batch size: new input shape and output buffers
            outs = self._bind(self.context, x)
        else:
            outs = bound[2]
            if bound[1] is not x:  # same shape, new input tensor: only its address changes
                self.context.set_tensor_address(self.contract.input_names[0], x.data_ptr())
        self._bound = (n, x, outs)  # keeps x and the outputs alive while the stream may still use them
        self._enqueue(self.context)
        return tuple(outs[name] for name in self.contract.output_names)

    def _replay(self, x):
        import torch

        n = int(x.shape[0])
        if n not in self._contexts:
            context = self.engine.create_execution_context()
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outs = self._bind(context, static_in)
                self._enqueue(context)  # the warm-up enqueue TensorRT needs before a capture
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._enqueue(context)
            self._contexts[n] = (context, static_in, outs, graph)
        _, static_in, outs, graph = self._contexts[n]
        static_in.copy_(x)
        graph.replay()
        return tuple(outs[name] for name in self.contract.output_names)

    def _deactivate(self) -> None:
        import torch

        self._contexts.clear()
        self.context = self.engine = None
        self._bound = None
        torch.cuda.empty_cache()
