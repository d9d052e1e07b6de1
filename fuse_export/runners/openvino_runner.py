"""OpenVINO runner (CPU plugin) for IR artifacts, with the inference precision always explicit.

OpenVINO's CPU plugin runs fp32 models in bf16 by default on CPUs with AVX512-BF16 or AMX, so an
unqualified run there is not fp32: every runner sets INFERENCE_PRECISION_HINT ("f32" for the fp32 and int8
IRs: int8 where the Q/DQ graph says, fp32 elsewhere; "bf16" for the bf16 backend's ResNet-18 trunk, its
heads staying f32) and the thread count.
Torch-free: numpy and openvino only (the slim runtime install runs it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.exporters.to_openvino import import_openvino, read_ir, shared_core
from fuse_export.runners.base import Runner

# Our precision names -> OpenVINO's INFERENCE_PRECISION_HINT values.
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: str | Path, pre: Preprocessing, precision: str = "fp32", threads: int | None = None,
                 **kw) -> None:
        super().__init__(pre, **kw)
        if precision not in INFERENCE_PRECISION:
            raise ValueError(f"precision {precision!r}: choose from {', '.join(INFERENCE_PRECISION)}")
        self.path = Path(path)
        self.precision = precision
        self.threads = threads or os.cpu_count() or 1  # explicit: OpenVINO's own default depends on the machine
        self.compiled = None

    def config(self) -> dict[str, str]:
        """The compile_model properties (also recorded by benchmarks, so a number says how it was run)."""
        return {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision],
                "INFERENCE_NUM_THREADS": str(self.threads), "PERFORMANCE_HINT": "LATENCY"}

    def _activate(self) -> None:
        ov = import_openvino()
        core = shared_core()
        model = read_ir(core, self.path)
        split = split_after_pooling(ov, model) if self.precision == "bf16" else None
        if split is None:
            stages = [(model, self.config())]
        else:  # the trunk in bf16, the heads after global pooling in f32 (see split_after_pooling)
            stages = [(split[0], self.config()), (split[1], {**self.config(), "INFERENCE_PRECISION_HINT": "f32"})]
        self._stages = []
        for part, cfg in stages:
            compiled = core.compile_model(part, "CPU", cfg)
            got = compiled.get_property("INFERENCE_PRECISION_HINT")
            if got != getattr(ov.Type, cfg["INFERENCE_PRECISION_HINT"]):  # never report bf16 as fp32, or the reverse
                raise RuntimeError(f"{self.label}: asked OpenVINO for inference precision "
                                   f"{cfg['INFERENCE_PRECISION_HINT']}, it compiled with {got}")
            self._stages.append((compiled, compiled.create_infer_request()))
        self.compiled = self._stages[0][0]
        last = self._stages[-1][0]
        self._outputs = [last.output(name) for name in self.contract.output_names]

    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        assert self.compiled is not None
        x = image
        for compiled, request in self._stages[:-1]:
            x = request.infer({0: x})[compiled.output(0)]
        result = self._stages[-1][1].infer({0: x})  # outputs are copied out of the request's buffers
        return tuple(np.asarray(result[port]) for port in self._outputs)

    def _deactivate(self) -> None:
        self._stages = []
        self.compiled = None


def split_after_pooling(ov, model):
    """(trunk, heads): the model cut after its last global pooling, or None when it has none.

    OpenVINO's CPU plugin computes every node in bf16 under a bf16 hint, the heads, softmaxes and stacker
    after pooling included, and honours no per-node override; those few thousand FLOPs in bf16 cost parity
    (trained 64x64 model: max |dprob| 3.9e-2 whole, 5.4e-3 split) and no time. So, as every reduced-precision
    artifact of this project does, the heads stay f32: a second, tiny compiled model fed the pooled features.
    """
    pools = [op for op in model.get_ordered_ops() if op.get_type_name() in ("ReduceMean", "AvgPool")]
    if not pools:
        return None
    return cut_model(ov, model, pools[-1].output(0), "pooled_features")


def cut_model(ov, model, output, name: str = "cut"):
    """(before, after): `model` cut at `output` (a node's output). `before` ends there; `after` takes it as a new
    parameter `name` and keeps the model's outputs. The model is modified (read a fresh one to cut again)."""
    consumers = list(output.get_target_inputs())  # before the first part's own Result joins them
    before = ov.Model([output], model.get_parameters(), "before")
    fed = ov.opset13.parameter(output.get_partial_shape(), output.get_element_type(), name=name)
    for consumer in consumers:
        consumer.replace_source_output(fed.output(0))
    return before, ov.Model(model.outputs, [fed], "after")
