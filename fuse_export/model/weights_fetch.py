"""Finding, fetching and verifying the pretrained weights file that `model.pretrained` names.

`resolve_weights` turns model.pretrained into a path: a path as given, or `imagenet` for torchvision's ImageNet file
`resnet18-f37072fd.pth`, taken from the torch hub cache after checking its FULL sha256, or downloaded there through
torch.hub (progress bar, full sha256 check) unless offline (`FUSE_EXPORT_OFFLINE=1`, `--offline`).
`FUSE_EXPORT_IMAGENET_URL` overrides where it comes from (a mirror; the tests' local server), and a mirror file the
project has no full hash for is refused unless `FUSE_EXPORT_IMAGENET_SHA256` gives it. Reading the file and loading
it into the trunk is `fuse_export.model.weights`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

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
