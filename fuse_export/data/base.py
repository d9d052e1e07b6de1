"""Containers every loader returns: a data set is named splits of images and labels plus class names."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fuse_export.errors import DataError
from fuse_export.preprocess import open_image as decode_image


@contextlib.contextmanager
def csv_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn decoding, CSV-syntax and I/O errors while reading `path` into one-line DataErrors."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read the file ({exc.strerror or exc})") from None


SPLITS = ("train", "val", "test")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as deployment does (`fuse_export.preprocess.open_image`: EXIF orientation, alpha
    over white, 16-bit to 8-bit, palette/CMYK), as RGB.

    One decoder for training and deployment: a photo with an orientation tag, transparency or 16-bit samples
    must reach the model the same way in both, or the deployed model sees inputs it was never trained on.
    """
    return decode_image(path).convert("RGB")


@dataclass
class Split:
    """One split. Images live in memory (`images`, uint8 [N,H,W] or [N,H,W,3]) or on disk (`paths`)."""

    labels: np.ndarray  # int64 [N], hard labels (for soft-target sets: the majority class)
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    soft_targets: np.ndarray | None = None  # float32 [N, C] vote distributions, when the set has them
    groups: np.ndarray | None = None  # identity per sample, for subject-independent splits
    names: list[str] | None = None  # per-sample identifiers, for reports

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Split holds exactly one of images or paths")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, index: int) -> Image.Image:
        """The image at `index` as an upright RGB PIL image (grayscale replicated to 3 channels; the transforms
        apply the model's colour mode)."""
        if self.images is not None:
            return Image.fromarray(self.images[index]).convert("RGB")
        assert self.paths is not None
        return open_image(self.paths[index])

    def name(self, index: int) -> str:
        if self.names is not None:
            return self.names[index]
        if self.paths is not None:
            return str(self.paths[index])
        return f"#{index}"

    def subset(self, indices: np.ndarray) -> Split:
        """A new split holding only `indices` (used for --limit, held-out carving and k-fold)."""
        idx = np.asarray(indices, dtype=np.int64)

        def take(a):
            return None if a is None else a[idx]

        def take_list(a):
            return None if a is None else [a[i] for i in idx]

        return Split(
            labels=self.labels[idx],
            images=take(self.images),
            paths=take_list(self.paths),
            soft_targets=take(self.soft_targets),
            groups=take(self.groups),
            names=take_list(self.names),
        )


@dataclass
class FerDataset:
    """A loaded data set: its class names (in label order) and its splits."""

    name: str
    class_names: tuple[str, ...]
    splits: dict[str, Split] = field(default_factory=dict)
    source: str = ""
    # The colour of the set's images: "gray" for gray sources (FER-2013, FERPlus), so the model's preprocessing
    # contract converts any input to gray; "rgb" for colour sets.
    color_mode: str = "rgb"
    # What the loader left out under on_bad = "skip" ("where<TAB>problem" lines); the trainer writes bad_files.txt.
    bad_files: list[str] = field(default_factory=list)
    # Samples the format's own rules leave out, by reason (e.g. FERPlus' empty image names); not errors.
    skipped: dict[str, int] = field(default_factory=dict)
    # The record of injected label noise (fuse_export.data.noise.NoiseRecord), when asked for.
    label_noise: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}
