"""Calibration images for int8: a FER-2013 CSV or a folder of images, through the recipe's eval geometry.

The images are kept as uint8 RGB [N, H, W, 3] after resize and center crop, so the same set feeds both
contracts: normalized (`normalize`, exactly ToTensor + Normalize) for float-input graphs, raw for uint8-input
ones. Some images are held out of calibration to verify the exported files on realistic inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fuse_export.contract import Preprocessing
from fuse_export.preprocess import IMAGE_SUFFIXES, normalize  # noqa: F401  (normalize: re-exported)
from fuse_export.errors import DataError, UserError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_SAMPLES = 512
MIN_CALIBRATION_IMAGES = 300  # ORT and TensorRT guidance: a few hundred representative images
# Images kept out of calibration to verify the artifacts on realistic inputs. 256, not 64: an int8 file's worst
# image is rare (an 8-bit file that saturates on a CPU without VNNI passed 64 test images and failed on 210).
HELD_OUT = 256


@dataclass
class CalibrationSet:
    """Calibration images and held-out images, both uint8 RGB [N, H, W, 3] after the eval geometry."""

    pixels: np.ndarray
    held_out: np.ndarray
    held_out_labels: np.ndarray | None
    source: str

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "images": int(len(self.pixels)), "held_out": int(len(self.held_out))}


def random_pixels(pre: Preprocessing, n: int, seed: int = 1234) -> np.ndarray:
    """Seeded uint8 noise images, for verification when no images were given."""
    return np.random.default_rng(seed).integers(0, 256, (n, pre.image_size, pre.image_size, 3), dtype=np.uint8)


def _geometry(images: list, pre: Preprocessing) -> np.ndarray:
    from fuse_export.data.transforms import eval_pixels_transform

    tf = eval_pixels_transform(pre)
    out = np.zeros((len(images), pre.image_size, pre.image_size, 3), np.uint8)
    for i, im in enumerate(images):
        out[i] = tf(im).numpy().transpose(1, 2, 0)
    return out


def _split_pool(n: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle one pool of images: up to HELD_OUT (at most a fifth) held out, then up to `samples` to calibrate."""
    order = rng.permutation(n)
    k = min(HELD_OUT, n // 5)
    return order[k:k + samples], order[:k]


def _from_csv(path: Path, pre: Preprocessing, samples: int, rng: np.random.Generator) -> CalibrationSet:
    from fuse_export.data.registry import LOADERS

    ds = LOADERS["fer2013-csv"](path, require_splits=())  # any usage mix: calibration needs no fixed splits
    train = ds.splits["train"]
    test = next((ds.splits[s] for s in ("test", "val") if len(ds.splits[s])), None)
    if len(train) and test is not None:
        calib_split, calib_idx = train, rng.permutation(len(train))[:samples]
        held_split, held_idx = test, np.arange(min(HELD_OUT, len(test)))
    else:  # a CSV with one usage only: carve the held-out images from the same rows
        calib_split = held_split = next(s for s in (train, *(ds.splits[k] for k in ("val", "test"))) if len(s))
        calib_idx, held_idx = _split_pool(len(calib_split), samples, rng)
    return CalibrationSet(_geometry([calib_split.load(int(i)) for i in calib_idx], pre),
                          _geometry([held_split.load(int(i)) for i in held_idx], pre),
                          held_split.labels[held_idx], f"{path} (FER-2013 CSV)")


def _open_image(path: Path):
    """Decode as deployment does (EXIF orientation, alpha, bit depth), so calibration sees deployed inputs."""
    from fuse_export.preprocess import open_image

    try:
        return open_image(path).convert("RGB")
    except DataError as exc:
        raise DataError(path, f"cannot be read as an image ({exc.problem}); remove it from the folder") from None


def _from_folder(path: Path, pre: Preprocessing, samples: int, rng: np.random.Generator) -> CalibrationSet:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(path, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    calib_idx, held_idx = _split_pool(len(files), samples, rng)
    # An ImageFolder layout (one sub-folder per class name) gives labels, hence held-out accuracy.
    names = {n: i for i, n in enumerate(pre.class_names)}
    parents = [files[i].parent.name for i in held_idx]
    labels = np.asarray([names[p] for p in parents]) if parents and all(p in names for p in parents) else None
    return CalibrationSet(_geometry([_open_image(files[i]) for i in calib_idx], pre),
                          _geometry([_open_image(files[i]) for i in held_idx], pre), labels,
                          f"{path} (folder of {len(files)} images)")


def load_calibration(path: str | os.PathLike, pre: Preprocessing, samples: int = DEFAULT_CALIBRATION_SAMPLES,
                     seed: int = 0) -> CalibrationSet:
    """Calibration images from a FER-2013 CSV (train rows; held out: test rows) or a folder of images."""
    p = Path(path)
    if samples < 1:
        raise UserError(f"--calibration-samples {samples}: expected a positive number of images")
    rng = np.random.default_rng(seed)
    if p.is_dir():
        calib = _from_folder(p, pre, samples, rng)
    elif p.is_file() and p.suffix.lower() == ".csv":
        calib = _from_csv(p, pre, samples, rng)
    elif p.exists():
        raise DataError(p, "expected a FER-2013 CSV (emotion,pixels,Usage) or a folder of images")
    else:
        raise DataError(p, "not found; --calibration-data takes a FER-2013 CSV or a folder of images")
    if len(calib.pixels) == 0:
        raise DataError(p, "no images left for calibration after holding out verification images")
    return calib


def calibration_warning(calib: CalibrationSet) -> str | None:
    """The line to show when there are too few calibration images for stable activation ranges."""
    if len(calib.pixels) >= MIN_CALIBRATION_IMAGES:
        return None
    return (f"warning: only {len(calib.pixels)} calibration images from {calib.source}; int8 ranges are reliable "
            f"from about {MIN_CALIBRATION_IMAGES} representative images (--calibration-samples)")
