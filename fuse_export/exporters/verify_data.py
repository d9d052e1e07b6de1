"""The images exported artifacts are verified on: real faces whenever any are known, noise only with a warning.

In order: `--verify-data PATH` (any supported data-set format, or a folder of images), the calibration data's
held-out images, the data set the checkpoint was trained on (its recipe's format, path and options), and
only then seeded noise, which says little about real faces (a warning says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.errors import DataError, UserError
from fuse_export.exporters.calibration import CalibrationSet, _geometry, random_pixels
from fuse_export.exporters.options import VERIFY_NOISE_SAMPLES, VerifyOptions


@dataclass
class VerificationImages:
    pixels: np.ndarray  # uint8 RGB [N, H, W, 3] after the eval geometry
    labels: np.ndarray | None
    source: str  # recorded as the manifest's verified_on
    real: bool  # False: seeded noise


def guess_format(path: Path) -> str | None:
    """The data-set format of `path` when it can be told from the path alone (a .csv is FER-2013)."""
    return "fer2013-csv" if path.suffix.lower() == ".csv" else None


def dataset_images(fmt: str, path: str | Path, pre: Preprocessing, samples: int,
                   options: dict[str, Any] | None = None) -> VerificationImages:
    """Up to `samples` images of a data set's test split (val, then train, when it has none), with labels."""
    from fuse_export.data.registry import load_dataset

    ds = load_dataset(fmt, path, **(options or {}))
    if list(ds.class_names) != list(pre.class_names):
        raise UserError(f"{path}: class names {list(ds.class_names)} differ from the model's {list(pre.class_names)}")
    split_name = next((s for s in ("test", "val", "train") if s in ds.splits and len(ds.splits[s])), None)
    if split_name is None:
        raise DataError(path, "no images in any split")
    split = ds.splits[split_name]
    n = min(samples, len(split))
    return VerificationImages(_geometry([split.load(i) for i in range(n)], pre), split.labels[:n].copy(),
                              f"{n} {split_name} images of {path} ({fmt})", True)


def _folder_images(path: Path, pre: Preprocessing, samples: int) -> VerificationImages:
    """A plain folder of images (searched recursively); labels when the parent folders are class names."""
    from fuse_export.exporters.calibration import IMAGE_SUFFIXES, _open_image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:samples]
    if not files:
        raise DataError(path, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    names = {n: i for i, n in enumerate(pre.class_names)}
    parents = [f.parent.name for f in files]
    labels = np.asarray([names[p] for p in parents]) if all(p in names for p in parents) else None
    return VerificationImages(_geometry([_open_image(f) for f in files], pre), labels,
                              f"{len(files)} images of {path} (folder)", True)


def _trained_on(state: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    """(format, path, options) of the data the checkpoint was trained on, when recorded and still there."""
    recipe = state.get("recipe") or {}
    data = recipe.get("data") or {}
    path = state.get("data_path") or data.get("path")
    if not path or not Path(path).exists():
        return None
    options = {k: v for k, v in (data.get("options") or {}).items() if not str(k).startswith("noise_")}
    return str(data.get("format", "fer2013-csv")), str(path), options


def verification_images(pre: Preprocessing, verify: VerifyOptions, calib: CalibrationSet | None,
                        state: dict[str, Any], warn: Any = print) -> VerificationImages:
    """The images to verify on (see the module docstring); `warn` gets the line shown for noise."""
    if verify.data is not None:
        path = Path(verify.data)
        if not path.exists():
            raise DataError(path, "not found; --verify-data takes a data set (any supported format) or a folder "
                                  "of images")
        fmt = verify.data_format or guess_format(path)
        return dataset_images(fmt, path, pre, verify.samples) if fmt else _folder_images(path, pre, verify.samples)
    if calib is not None and len(calib.held_out):
        return VerificationImages(calib.held_out, calib.held_out_labels,
                                  f"{len(calib.held_out)} held-out images of {calib.source}", True)
    if (trained := _trained_on(state)) is not None:
        fmt, path, options = trained
        try:
            return dataset_images(fmt, path, pre, verify.samples, options)
        except UserError as exc:  # the data moved or changed since training: say so, then fall back
            warn(f"warning: cannot verify on the training data {path} ({exc}); pass --verify-data PATH")
    warn(f"warning: verifying on {VERIFY_NOISE_SAMPLES} noise images (no --verify-data, no calibration data and "
         "the checkpoint's training data is not found): parity on noise says little about real faces")
    return VerificationImages(random_pixels(pre, VERIFY_NOISE_SAMPLES), None,
                              f"{VERIFY_NOISE_SAMPLES} random images (seed 1234)", False)
