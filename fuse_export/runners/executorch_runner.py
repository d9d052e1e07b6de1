"""Runner for ExecuTorch programs (the executorch format: `.pte` with the XNNPACK delegate), CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.runners.base import Runner


class ExecuTorchRunner(Runner):
    """Loads model.pte with `executorch.runtime` and executes its `forward` method. XNNPACK sizes its own thread
    pool (the machine's cores); `threads` is not settable through the Python runtime and is recorded only."""

    backend = "executorch"

    def __init__(self, path: str | Path, pre: Preprocessing, threads: int | None = None, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)
        self.threads = threads
        self.method = None
        self.metadata: dict = {}

    def _activate(self) -> None:
        from fuse_export.exporters.to_executorch import load_executorch

        self.method, self.metadata = load_executorch(self.path)

    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        assert self.method is not None
        # The program's memory is planned for at most `max_batch` images (to_executorch.MAX_BATCH_ET): a larger
        # batch runs in pieces of that size.
        step = int(self.metadata.get("max_batch") or len(image))
        parts = []
        for start in range(0, len(image), step):
            x = torch.from_numpy(np.ascontiguousarray(image[start:start + step]))
            parts.append([o.float().numpy() for o in self.method.execute([x])])
        return tuple(np.concatenate(outs) for outs in zip(*parts))

    def _deactivate(self) -> None:
        self.method = None
