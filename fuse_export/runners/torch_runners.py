"""Runners for PyTorch eager (from a checkpoint) and TorchScript (from an exported file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fuse_export.contract import Preprocessing
from fuse_export.runners.base import Runner


class _TorchRunner(Runner):
    def __init__(self, pre: Preprocessing, device: str = "cpu", threads: int | None = None, **kw) -> None:
        super().__init__(pre, **kw)
        self.device = torch.device(device)
        self.threads = threads
        self.module: torch.nn.Module | None = None

    def _set_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    @torch.inference_mode()
    def _infer(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        assert self.module is not None
        outs = self.module(torch.from_numpy(image).to(self.device))
        return tuple(o.float().cpu().numpy() for o in outs)


class EagerRunner(_TorchRunner):
    """The reference: the fused model in eager PyTorch, fp32, through the export view."""

    backend = "pytorch"

    def __init__(self, checkpoint: str | Path, pre: Preprocessing, **kw) -> None:
        super().__init__(pre, **kw)
        self.checkpoint = Path(checkpoint)

    def _activate(self) -> None:
        from fuse_export.model.fused import ExportView
        from fuse_export.train.checkpoint import load_model

        self._set_threads()
        loaded = load_model(self.checkpoint)
        embed = self.contract.layout == "uint8-nhwc"
        self.module = ExportView(loaded.model, loaded.preprocessing if embed else None).eval().to(self.device)


class TorchScriptRunner(_TorchRunner):
    backend = "torchscript"

    def __init__(self, path: str | Path, pre: Preprocessing, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)

    def _activate(self) -> None:
        from fuse_export.export.to_torchscript import load_torchscript

        self._set_threads()
        self.module, _ = load_torchscript(self.path, str(self.device))
