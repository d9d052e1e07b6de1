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
        from fuse_export.training.checkpoint import load_model

        self._set_threads()
        loaded = load_model(self.checkpoint)
        embed = self.contract.layout == "uint8-nhwc"
        self.module = ExportView(loaded.model, loaded.preprocessing if embed else None).eval().to(self.device)


class EagerBf16Runner(EagerRunner):
    """PyTorch's own CPU bf16 path, the reference for the bf16 runtimes: the ResNet-18 trunk under bf16 autocast
    with channels_last weights and inputs (the oneDNN bf16 kernels' layout). The heads, the stacker and the
    softmax after global pooling stay fp32, as in every reduced-precision artifact of this project: a few
    thousand FLOPs that bf16 would not speed up but would cost parity (max |dprob| 1.0e-2 with them in bf16,
    2.1e-3 without, on the tests' small model)."""

    backend = "pytorch-bf16"

    def _activate(self) -> None:
        super()._activate()
        assert self.module is not None
        self.module = self.module.to(memory_format=torch.channels_last)
        fused = self.module.model
        trunk, device = fused.features, self.device.type

        def features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast(device, dtype=torch.bfloat16):
                feat, scn_feat = trunk(x.contiguous(memory_format=torch.channels_last))
            return feat.float(), scn_feat.float()

        fused.features = features  # this runner's own model copy, loaded in _activate


class TorchScriptRunner(_TorchRunner):
    backend = "torchscript"

    def __init__(self, path: str | Path, pre: Preprocessing, **kw) -> None:
        super().__init__(pre, **kw)
        self.path = Path(path)

    def _activate(self) -> None:
        from fuse_export.exporters.to_torchscript import load_torchscript

        self._set_threads()
        self.module, _ = load_torchscript(self.path, str(self.device))
