"""Runner for AOTInductor packages (the pt2 format), CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fuse_export.contract import Preprocessing
from fuse_export.runners.base import Runner


class Pt2Runner(Runner):
    """Loads model.pt2 with `torch._inductor.aoti_load_package` and calls the compiled model."""

    backend = "pt2"

    def __init__(self, path: str | Path, pre: Preprocessing, threads: int | None = None, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)
        self.threads = threads
        self.model = None
        self.metadata: dict = {}

    def _activate(self) -> None:
        from fuse_export.exporters.to_pt2 import load_pt2

        if self.threads:
            # The compiled kernels use the process's OpenMP pool, the same one torch sizes.
            torch.set_num_threads(self.threads)
        self.model, self.metadata = load_pt2(self.path)

    @torch.inference_mode()
    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        assert self.model is not None
        outs = self.model(torch.from_numpy(image))
        return tuple(o.float().numpy() for o in outs)

    def _deactivate(self) -> None:
        self.model = None
