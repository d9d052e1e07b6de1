"""Loading pretrained ResNet-18 weights into the trunk, safely and loudly.

Files are read without unpickling arbitrary objects (safetensors, or `torch.load(weights_only=True)`).
Layouts in circulation, all mapped onto torchvision's names by small named mappers:
- torchvision's ImageNet file `resnet18-f37072fd.pth` (plain names, 1000-way `fc.*` to drop); `imagenet`
  takes it from the torch hub cache after checking its FULL sha256, or downloads it there through torch.hub
  (progress bar, full sha256 check) unless offline (`FUSE_EXPORT_OFFLINE=1`, `--offline`);
  `FUSE_EXPORT_IMAGENET_URL` overrides where it comes from (a mirror; the tests' local server), and a mirror file
  the project has no full hash for is refused unless `FUSE_EXPORT_IMAGENET_SHA256` gives it;
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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fuse_export.errors import CheckpointError
from fuse_export.fileio import sha256_file

IMAGENET_FILE = "resnet18-f37072fd.pth"
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE}"
IMAGENET_NAMES = ("imagenet", "torchvision-imagenet")  # model.pretrained values that mean "the hub cache file"
IMAGENET_URL_ENV = "FUSE_EXPORT_IMAGENET_URL"  # a mirror of the file (a known name, or give its sha256 below)
IMAGENET_SHA256_ENV = "FUSE_EXPORT_IMAGENET_SHA256"  # the full sha256 of a mirror file the project does not know
OFFLINE_ENV = "FUSE_EXPORT_OFFLINE"  # 1: never download; a missing file is an error naming where to put it
# Full sha256 of every weights file the project fetches by name. torch.hub's name-<prefix>.ext carries only 32 bits
# of the hash, which a replaced file can be made to match; the full digest cannot. torchvision records only the
# prefix; this value (46,830,571 bytes) is the one recorded for the download.pytorch.org file by many unrelated
# projects that pin it.
KNOWN_SHA256: dict[str, str] = {
    IMAGENET_FILE: "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: name-<sha256 prefix>.ext
_FULL_SHA256 = re.compile(r"[0-9a-f]{64}")

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


def hub_checkpoint_dirs() -> list[Path]:
    """Where torch.hub keeps downloaded weights: $TORCH_HOME/hub/checkpoints, else $XDG_CACHE_HOME/torch/...,
    and ~/.cache/torch/hub/checkpoints (torch.hub.get_dir's rule, plus the default as a fallback)."""
    dirs = []
    if os.environ.get("TORCH_HOME"):
        dirs.append(Path(os.environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints")
    if os.environ.get("XDG_CACHE_HOME"):
        dirs.append(Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "torch" / "hub" / "checkpoints")
    dirs.append(Path("~/.cache/torch/hub/checkpoints").expanduser())
    return list(dict.fromkeys(dirs))


def offline_requested() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def imagenet_url() -> str:
    """Where `imagenet` downloads from: FUSE_EXPORT_IMAGENET_URL, else torchvision's ResNet18_Weights URL."""
    return os.environ.get(IMAGENET_URL_ENV) or IMAGENET_URL


def expected_sha256(name: str) -> str:
    """The full sha256 a weights file called `name` must have: the project's own record (KNOWN_SHA256), else
    FUSE_EXPORT_IMAGENET_SHA256; a file with neither is refused, because the sha256 prefix in a name is 32 bits."""
    given = os.environ.get(IMAGENET_SHA256_ENV, "").strip().lower()
    if given and not _FULL_SHA256.fullmatch(given):
        raise CheckpointError(f"{IMAGENET_SHA256_ENV}={given!r}: not a sha256 (64 hex digits); give the full "
                              f"sha256 of {name} (`sha256sum {name}`)")
    known = KNOWN_SHA256.get(name)
    if known and given and given != known:
        raise CheckpointError(f"{IMAGENET_SHA256_ENV} is {given}, but {name} is known to hash to {known}; "
                              f"unset {IMAGENET_SHA256_ENV}, or rename the mirror file if it is another file")
    if known or given:
        expected = known or given
        prefix = _HASH_IN_NAME.search(name)
        if prefix and not expected.startswith(prefix.group(1)):
            raise CheckpointError(f"{IMAGENET_SHA256_ENV} is {given}, but the name {name} says its sha256 starts "
                                  f"{prefix.group(1)}; one of the two is wrong")
        return expected
    raise CheckpointError(f"{IMAGENET_URL_ENV} names {name}, a file with no known sha256 (the prefix in a name is "
                          f"no check against a replaced file): set {IMAGENET_SHA256_ENV} to its full sha256, or "
                          f"mirror {IMAGENET_FILE} under its own name")


def check_sha256(path: Path, expected: str) -> None:
    """`path` must hash to `expected` (a full sha256): a corrupt or replaced cached file is refused."""
    digest = sha256_file(path)
    if digest != expected:
        raise CheckpointError(f"{path}: corrupt or replaced: its sha256 is {digest}, expected {expected}; delete the "
                              "file (it is downloaded again unless offline)")


def find_imagenet_weights(offline: bool | None = None, progress: bool = True) -> Path:
    """torchvision's ImageNet ResNet-18 file: from the hub cache (full sha256 checked), else downloaded into it."""
    url = imagenet_url()
    name = Path(url.split("?", 1)[0]).name
    expected = expected_sha256(name)  # before the cache: a file is only ever used against a full hash
    dirs = hub_checkpoint_dirs()
    for d in dirs:
        if (d / name).is_file():
            check_sha256(d / name, expected)
            return d / name
    where = (f"put {name} (from {url}) in {dirs[0]}, or set model.pretrained to the file's path "
             "(--pretrained PATH)")
    if offline_requested() if offline is None else offline:
        raise CheckpointError(f"ImageNet ResNet-18 weights not found and offline ({OFFLINE_ENV}=1 / --offline): {where}")
    _download(url, dirs[0] / name, expected, progress, where)
    return dirs[0] / name


def _download(url: str, dst: Path, sha256: str, progress: bool, where: str) -> None:
    """Fetch through torch.hub's downloader (progress bar; a temporary file renamed into place only when complete
    and matching the full `sha256`, so a failed, corrupt or replaced download leaves nothing in the cache)."""
    import urllib.error

    import torch.hub

    print(f"downloading ImageNet ResNet-18 weights from {url} into {dst.parent}", file=sys.stderr)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        # hash_prefix compares digest[:len(prefix)]: given the full digest, it is a full check.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256, progress=progress)
    except RuntimeError as exc:
        if "invalid hash value" in str(exc):
            raise CheckpointError(f"{url}: the download failed its sha256 check ({exc}); nothing was kept. "
                                  f"Retry, or {where}") from None
        raise CheckpointError(f"{url}: the download failed ({exc}); {where}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"ImageNet ResNet-18 weights could not be downloaded from {url} ({reason}): "
                              f"{where}") from None


def resolve_weights(spec: str | os.PathLike, offline: bool | None = None) -> Path:
    """A weights file path from model.pretrained: a path, or `imagenet` (the hub cache file, downloaded if absent
    and not offline)."""
    if str(spec).lower() in IMAGENET_NAMES:
        return find_imagenet_weights(offline)
    return Path(spec).expanduser()


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
