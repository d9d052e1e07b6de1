"""ONNX Runtime runner (CPU execution provider here; GPU providers join in the GPU backends work)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.errors import BackendUnavailable
from fuse_export.runners.base import Runner


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime "
                                 "(or onnxruntime-gpu, which replaces it)") from None
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, pre: Preprocessing, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int | None = None, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)
        self.providers = providers
        self.threads = threads
        self.session = None

    def _activate(self) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        # ENABLE_ALL adds layout transforms (NCHWc) that roughly halve batch-32 latency on CPU but cost a few
        # hundred ms at load; BASIC (constant folding, redundant-node removal) loads in tens of ms.
        level = "ORT_ENABLE_BASIC" if self.fast_startup else "ORT_ENABLE_ALL"
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.spin is not None:  # Runner.SPIN_MODES
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if self.spin == "off" else "1")
            opts.add_session_config_entry("session.force_spinning_stop", "1" if self.spin == "run" else "0")
        opts.log_severity_level = 3
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(f"onnxruntime {ort.__version__} lacks {', '.join(missing)} "
                                     f"(has {', '.join(ort.get_available_providers())})")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(self.providers))
        self._names = self.contract.output_names

    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        assert self.session is not None
        return tuple(self.session.run(self._names, {self.contract.input_names[0]: image}))

    def _deactivate(self) -> None:
        self.session = None
