"""fuse-export: a fused DCNN + Self-Cure Network FER model, trained, exported and verified across runtimes.

The Python API (the CLI is one client of it):

    import fuse_export as fx
    run = fx.train("synthetic-quick", data="faces.csv", out="runs/train")
    manifest = fx.export(run.best, "torchscript,onnx", out="runs/export")
    result = fx.bench("runs/export", fx.BenchOptions(batch_sizes=(1, 8)))
    with fx.load("runs/export") as model:
        print(model.predict(["face.png"]).labels)

Every name is imported on first use, so `import fuse_export` (and `fuse-export --help`) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it (imported lazily by __getattr__)
_LAZY: dict[str, str] = {
    "load": "fuse_export.app.loading",
    "Predictor": "fuse_export.app.loading",
    "Predictions": "fuse_export.app.loading",
    "train": "fuse_export.app.api",
    "export": "fuse_export.app.api",
    "bench": "fuse_export.app.api",
    "Manifest": "fuse_export.app.api",
    "ExportOptions": "fuse_export.exporters.options",
    "VerifyOptions": "fuse_export.exporters.options",
    "BenchOptions": "fuse_export.compare.bench",
    "BenchResult": "fuse_export.compare.bench",
    "ParityResult": "fuse_export.compare.parity",
    "UserError": "fuse_export.errors",
    "IntegrityError": "fuse_export.errors",
    "ParityError": "fuse_export.errors",
    "UnverifiedArtifactWarning": "fuse_export.errors",
}
__all__ = ["BenchOptions", "BenchResult", "ExportOptions", "IntegrityError", "Manifest", "ParityError", "ParityResult",
           "Predictions", "Predictor", "UnverifiedArtifactWarning", "UserError", "VerifyOptions", "__version__",
           "bench", "export", "load", "train"]

if TYPE_CHECKING:
    from fuse_export.app.loading import Predictions, Predictor, load
    from fuse_export.compare.bench import BenchOptions, BenchResult
    from fuse_export.compare.parity import ParityResult
    from fuse_export.errors import IntegrityError, ParityError, UnverifiedArtifactWarning, UserError
    from fuse_export.exporters.options import ExportOptions, VerifyOptions
    from fuse_export.app.api import Manifest, bench, export, train


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fuse_export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
