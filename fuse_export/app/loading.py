"""The Python API for inference: `fuse_export.load(export) -> Predictor`, then `predictor.predict(images)`.

Torch-free on the ONNX Runtime and OpenVINO backends: images are decoded and preprocessed by
`fuse_export.preprocess` (Pillow + numpy), the artifact is picked by the same selection code as `predict`,
and every batch of outputs is checked against the output contract.

    import fuse_export
    with fuse_export.load("runs/export") as model:          # the fastest backend available here
        out = model.predict(["face1.png", "face2.jpg"])     # paths, encoded bytes or PIL images
    out.labels, out.probabilities, out.confidence
"""

from __future__ import annotations

import os
import warnings

from fuse_export.cpuinfo import check_threads
from fuse_export.errors import UnverifiedArtifactWarning
from fuse_export.inference.predictor import Predictions, Predictor
from fuse_export.inference.selection import select_for

__all__ = ["Predictions", "Predictor", "load"]


def load(artifact_or_dir: str | os.PathLike, backend: str | None = None, device: str | None = None,
         threads: int | None = None, verify: bool = True, fast_startup: bool = False) -> Predictor:
    """A ready Predictor for an export folder (its manifest picks the artifact) or one artifact file.

    `backend`: a key of the backend table (`fuse-export doctor` lists them); default the fastest available.
    `device`: "cpu", "cuda" or "cuda:N" (without a backend: the fastest artifact there). `threads`: intra-op threads of the runtime.
    `verify`: check the artifact against its manifest's sha256 first (a file its folder's manifest does not list is
    refused; a lone file with no manifest runs with an UnverifiedArtifactWarning). `fast_startup`: load fast rather
    than optimize for throughput (for a process that predicts a few images and exits).
    """
    check_threads(threads, "threads")  # before the artifact is selected and hashed
    sel = select_for(artifact_or_dir, backend, device, verify)
    if sel.warning:
        warnings.warn(sel.warning, UnverifiedArtifactWarning, stacklevel=2)
    return Predictor(sel, threads, fast_startup, device=device)
