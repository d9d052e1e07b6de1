"""Loading pretrained ResNet-18 weights into the trunk, safely and loudly.

Files are read without unpickling arbitrary objects (safetensors, or `torch.load(weights_only=True)`).
Key layouts are mapped by small named mappers; the loader reports loaded / skipped / missing counts and
refuses a partial load unless asked, because the SCN authors' own loader silently loaded nothing.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fuse_export.errors import CheckpointError

# SCN's Res18Feature wraps the torchvision children in `features`: 0 conv1, 1 bn1, 4..7 layer1..4.
_SCN_FEATURES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Face-recognition / classification layers found in circulating checkpoints; never trunk tensors.
_HEAD_PREFIXES = ("fc.", "feature.", "classifier.", "head.", "alpha.")


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _scn_features(key: str) -> str:
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if m and m.group(1) in _SCN_FEATURES:
        return f"{_SCN_FEATURES[m.group(1)]}.{m.group(2)}"
    return key


def _backbone_prefix(key: str) -> str:
    # Our own checkpoints (and timm-like wrappers) keep the trunk under `backbone.`.
    return key[len("backbone."):] if key.startswith("backbone.") else key


# Applied in order to every key; each is a no-op on keys it does not recognise.
KEY_MAPPERS: list[Callable[[str], str]] = [_strip_module, _backbone_prefix, _scn_features]


@dataclass
class LoadReport:
    loaded: int
    expected: int
    skipped: list[str] = field(default_factory=list)  # keys in the file that are not trunk tensors
    missing: list[str] = field(default_factory=list)  # trunk tensors the file did not provide
    mismatched: list[str] = field(default_factory=list)  # same name, different shape

    def summary(self) -> str:
        return (f"loaded {self.loaded}/{self.expected} backbone tensors, skipped {len(self.skipped)}, "
                f"missing {len(self.missing)}, shape-mismatched {len(self.mismatched)}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file (safetensors, or a torch file holding a state dict or a dict with one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load: the file holds objects other than tensors and plain "
                              f"containers ({str(exc).splitlines()[0]}); re-save its state_dict") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (expected tensors, or a dict with 'state_dict')")
    return obj


def map_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for mapper in KEY_MAPPERS:
            key = mapper(key)
        out[key] = value
    return out


def load_backbone_weights(trunk: nn.Module, path: str | os.PathLike, allow_partial: bool = False) -> LoadReport:
    """Map the file's keys onto `trunk`, copy what fits, and fail unless every trunk tensor was loaded."""
    source = map_keys(read_state_dict(path))
    target = trunk.state_dict()
    report = LoadReport(loaded=0, expected=len(target))
    to_load = {}
    for key, value in source.items():
        if key not in target or key.startswith(_HEAD_PREFIXES):
            report.skipped.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
        else:
            to_load[key] = value
    report.missing = [k for k in target if k not in to_load]
    report.loaded = len(to_load)
    if report.loaded < report.expected and not allow_partial:
        examples = ", ".join((report.missing[:3] or []) + report.mismatched[:2])
        skipped = ", ".join(report.skipped[:3])
        raise CheckpointError(f"{path}: {report.summary()} (missing e.g. {examples}; unused keys e.g. {skipped}); "
                              "the file does not fit a ResNet-18 trunk, or pass --allow-partial-weights")
    trunk.load_state_dict(to_load, strict=False)
    return report
