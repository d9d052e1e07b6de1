"""Loading pretrained ResNet-18 weights into the trunk, safely and loudly.

Files are read without unpickling arbitrary objects (safetensors, or `torch.load(weights_only=True)`).
Layouts in circulation, all mapped onto torchvision's names by small named mappers:
- torchvision's ImageNet file `resnet18-f37072fd.pth` (plain names, 1000-way `fc.*` to drop); `imagenet` names
  it, found in the torch hub cache or downloaded there with a full sha256 check (`fuse_export.model.weights_fetch`);
- MS-Celeb-1M `ijba_res18_naive.pth.tar` (the SCN authors' file): `{'state_dict': ...}` with `module.` keys
  and face-recognition layers `feature.*` / `fc.*` to drop;
- MS-Celeb-1M `resnet18_msceleb.pth` (DAN, DACL, RUL): `{'state_dict': ...}` with plain torchvision names;
- SCN's own `Res18Feature` checkpoints: `features.N.*` (0 conv1, 1 bn1, 4..7 layer1..4), `fc.*`, `alpha.*`;
- fuse-export checkpoints (`backbone.*`).
The loader reports loaded / skipped / missing counts and refuses a partial load unless asked, because the
SCN authors' own loader silently loaded nothing.
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
from fuse_export.model.weights_fetch import resolve_weights

# SCN's Res18Feature wraps the torchvision children in `features`: 0 conv1, 1 bn1, 4..7 layer1..4.
_SCN_FEATURES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Face-recognition / classification layers found in circulating checkpoints; never trunk tensors.
_HEAD_PREFIXES = ("fc.", "feature.", "classifier.", "head.", "alpha.")
# Names of trunk tensors; a file key under one of them that the trunk lacks means another architecture.
_TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
# BatchNorm's step counter: absent from files saved before PyTorch 0.4.1 (the MS-Celeb files), never needed.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def _strip_module(key: str) -> str:
    return key.removeprefix("module.")


def _backbone_prefix(key: str) -> str:
    # Our own checkpoints (and timm-like wrappers) keep the trunk under `backbone.`.
    return key.removeprefix("backbone.")


def _scn_features(key: str) -> str:
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if m and m.group(1) in _SCN_FEATURES:
        return f"{_SCN_FEATURES[m.group(1)]}.{m.group(2)}"
    return key


# Applied in order to every key; each is a no-op on keys it does not recognise.
KEY_MAPPERS: list[Callable[[str], str]] = [_strip_module, _backbone_prefix, _scn_features]


def detect_layout(keys: list[str]) -> str:
    """A name for the key layout, for messages: which of the circulating formats this file looks like."""
    prefix = "DataParallel (module.) " if any(k.startswith("module.") for k in keys) else ""
    bare = [_strip_module(k) for k in keys]
    if any(re.match(r"features\.\d+\.", k) for k in bare):
        return prefix + "SCN features.N"
    if any(k.startswith("backbone.") for k in bare):
        return prefix + "fuse-export backbone."
    if any(k.startswith("feature.") for k in bare):
        return prefix + "MS-Celeb-1M face model (conv1/layerN + feature + fc)"
    return prefix + "torchvision ResNet names"


@dataclass
class LoadReport:
    loaded: int
    expected: int
    layout: str = ""
    skipped: list[str] = field(default_factory=list)  # keys in the file that are not trunk tensors
    missing: list[str] = field(default_factory=list)  # trunk tensors the file did not provide
    mismatched: list[str] = field(default_factory=list)  # same name, different shape
    unexpected: list[str] = field(default_factory=list)  # trunk-like names a ResNet-18 lacks (layer1.2.*, ...)

    @property
    def complete(self) -> bool:
        return self.loaded == self.expected

    def summary(self) -> str:
        layout = f" ({self.layout} layout)" if self.layout else ""
        return (f"loaded {self.loaded}/{self.expected} backbone tensors{layout}, skipped {len(self.skipped)}, "
                f"missing {len(self.missing)}, shape-mismatched {len(self.mismatched)}, "
                f"unexpected {len(self.unexpected)}")


def describe_load_error(exc: BaseException, what: str = "PyTorch weights file") -> str:
    """What a failed `torch.load(weights_only=True)` means, in one clause, without torch's advice to load with
    weights_only=False (which would run whatever code the file carries)."""
    text = str(exc)
    unsafe = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if unsafe:
        return (f"refused to load: the file holds a {unsafe.group(1)} object, not only tensors and plain data "
                "(unpickling it could run code; nothing in it was run)")
    if isinstance(exc, UnicodeDecodeError):  # random bytes read as a legacy (non-zip) pickle's text header
        return f"not a readable {what} (corrupt: its bytes are neither a zip archive nor a pickle; nothing in it was run)"
    if isinstance(exc, pickle.UnpicklingError):
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        why = detail.group(1).strip() if detail else "unknown content"
        return (f"not a readable {what} (corrupt pickle data, or a pickle this safe loader refuses: {why}; "
                "nothing in it was run)")
    if isinstance(exc, EOFError) or "central directory" in text or "zip archive" in text:
        return f"not a readable {what} (empty, truncated or corrupt: the file ends before its data does)"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a file"
    # Anything else the unpickler raises on bytes it cannot parse (IndexError, KeyError, struct.error, ... vary with
    # the bytes): the file is corrupt or is no PyTorch file at all.
    first = text.splitlines()[0] if text else ""
    return f"not a readable {what} (corrupt, or not a PyTorch file: {type(exc).__name__}{': ' + first[:200] if first else ''})"


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
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError (zip), EOFError, OSError...
        raise CheckpointError(f"{path}: {describe_load_error(exc)}; pass a weights file (a state dict of "
                              "tensors, .pth/.pt or .safetensors)") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (expected tensors, or a dict with 'state_dict')")
    return obj


def map_keys(state: dict[str, torch.Tensor], path: str | os.PathLike = "") -> dict[str, torch.Tensor]:
    """The file's tensors under trunk names; two file keys landing on one name is an error, not a coin toss."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        mapped = key
        for mapper in KEY_MAPPERS:
            mapped = mapper(mapped)
        if mapped in out:
            raise CheckpointError(f"{path}: keys {origin[mapped]!r} and {key!r} both map to {mapped!r}; "
                                  "the file mixes layouts")
        out[mapped], origin[mapped] = value, key
    return out


def load_backbone_weights(trunk: nn.Module, path: str | os.PathLike, allow_partial: bool = False) -> LoadReport:
    """Map the file's keys onto `trunk`, copy what fits, and fail unless every trunk tensor was loaded.

    `path` may be `imagenet` (the torch hub cache file). BatchNorm's num_batches_tracked counters are
    loaded when present but are not required (old files lack them).
    """
    path = resolve_weights(path)
    raw = read_state_dict(path)
    source = map_keys(raw, path)
    target = trunk.state_dict()
    required = [k for k in target if not k.endswith(_OPTIONAL_SUFFIX)]
    report = LoadReport(loaded=0, expected=len(required), layout=detect_layout(list(raw)))
    to_load = {}
    for key, value in source.items():
        if key not in target and key.startswith(_TRUNK_PREFIXES):
            report.unexpected.append(key)  # trunk-like but not ResNet-18's: a deeper ResNet (34 holds all of 18's keys)
        elif key not in target or key.startswith(_HEAD_PREFIXES):
            report.skipped.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
        else:
            to_load[key] = value.to(target[key].dtype)
    report.missing = [k for k in required if k not in to_load]
    report.loaded = sum(1 for k in required if k in to_load)
    if report.unexpected and not allow_partial:
        raise CheckpointError(f"{path}: {report.summary()}; the file has trunk tensors a ResNet-18 does not have "
                              f"(e.g. {', '.join(report.unexpected[:3])}): a deeper ResNet? Pass a ResNet-18 file, or "
                              "--allow-partial-weights (model.allow_partial_weights = true) to load the matching part")
    if not report.complete and not allow_partial:
        examples = ", ".join((report.missing[:3] or []) + report.mismatched[:2])
        skipped = ", ".join(report.skipped[:3]) or "none"
        raise CheckpointError(f"{path}: {report.summary()} (missing e.g. {examples}; unused keys e.g. {skipped}); "
                              "the file does not fit a ResNet-18 trunk, or pass --allow-partial-weights "
                              "(model.allow_partial_weights = true) to accept a partial load")
    trunk.load_state_dict(to_load, strict=False)
    return report
