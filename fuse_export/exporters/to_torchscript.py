"""TorchScript: the export view traced, frozen and saved with its metadata as an extra file."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from fuse_export.fileio import atomic_path

METADATA_FILE = "fuse_export.json"


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """torch.jit is deprecated upstream; its warnings are noise to a user who asked for TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        yield


def export_torchscript(view: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike,
                       metadata: dict[str, Any]) -> None:
    """Trace on `example` (batch >= 2 keeps the batch dimension generic), freeze, save atomically."""
    view = view.eval()
    with quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(view, (example,), check_trace=False)
        frozen = torch.jit.freeze(traced)
        with atomic_path(path) as tmp:
            torch.jit.save(frozen, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata)})


def load_torchscript(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript artifact and its metadata (plain torch.jit.load works too)."""
    files = {METADATA_FILE: ""}
    with quiet_jit():
        module = torch.jit.load(str(path), map_location=device, _extra_files=files)
    meta = json.loads(files[METADATA_FILE]) if files[METADATA_FILE] else {}
    return module.eval(), meta


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata embedded in a TorchScript file (the format table's `metadata_reader`)."""
    return load_torchscript(path)[1]
