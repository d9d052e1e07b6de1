"""Train and eval transforms, derived from the preprocessing contract (`fuse_export.contract.Preprocessing`).

The eval transform *is* the contract's definition of deployed preprocessing: colour mode, then geometry with
PIL's bilinear resize (torchvision's Resize on a PIL image), then scale to [0, 1] and normalize. The train
transform is the matching augmentation for each geometry:

* "resize-crop" (Akhand et al.'s pair): train on a random-resized crop whose area share is centred on the
  eval crop's ((1/resize_ratio)^2, 77% of the short-side square at 256/224) within +-15%, near-square aspect,
  plus a horizontal flip; eval resizes the short side and center-crops. Faces keep their scale between the two.
* "squash" (SCN's released code): resize the whole frame to HxH for both, plus a flip for training.

EXIF orientation is applied where files are opened (`fuse_export.data.base.open_image`), before this.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision import transforms as T

from fuse_export.contract import Preprocessing

# Spread of the training crop's area share around the eval crop's share, and its aspect range: narrow, so the
# faces a model trains on are the size of the faces it is deployed on (the scale range of ImageNet's default
# (0.08, 1) would train on faces up to 3.5x larger).
TRAIN_SCALE_SPREAD = 0.15
TRAIN_RATIO = (0.9, 1 / 0.9)


class ToColorMode:
    """PIL image -> RGB ("rgb"), or luma replicated to 3 channels ("gray"; PIL's convert("L"), ITU-R 601-2)."""

    def __init__(self, color_mode: str) -> None:
        self.color_mode = color_mode

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.color_mode == "gray":
            return image.convert("L").convert("RGB")
        return image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.color_mode!r})"


def train_crop_scale(pre: Preprocessing) -> tuple[float, float]:
    """Area-share range of the training crop: the eval crop's share (1/resize_ratio)^2, +-TRAIN_SCALE_SPREAD."""
    share = min(1.0, (1.0 / pre.resize_ratio) ** 2)
    return share * (1 - TRAIN_SCALE_SPREAD), min(1.0, share * (1 + TRAIN_SCALE_SPREAD))


def geometry_ops(pre: Preprocessing) -> list:
    """The contract's eval geometry on a PIL image."""
    if pre.geometry == "squash":
        return [T.Resize((pre.image_size, pre.image_size))]
    return [T.Resize(pre.resize_size), T.CenterCrop(pre.image_size)]


def train_geometry_ops(pre: Preprocessing) -> list:
    """The training augmentation that matches the contract's geometry (see the module docstring)."""
    if pre.geometry == "squash":
        return [T.Resize((pre.image_size, pre.image_size)), T.RandomHorizontalFlip()]
    return [T.RandomResizedCrop(pre.image_size, scale=train_crop_scale(pre), ratio=TRAIN_RATIO),
            T.RandomHorizontalFlip()]


def train_transform(pre: Preprocessing) -> T.Compose:
    """Colour mode, the geometry's training augmentation, to tensor, normalize."""
    return T.Compose([ToColorMode(pre.color_mode), *train_geometry_ops(pre), T.ToTensor(),
                      T.Normalize(pre.mean, pre.std)])


def eval_transform(pre: Preprocessing) -> T.Compose:
    """The contract's preprocessing: colour mode, geometry (PIL bilinear), to tensor, normalize."""
    return T.Compose([ToColorMode(pre.color_mode), *geometry_ops(pre), T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def eval_pixels_transform(pre: Preprocessing) -> T.Compose:
    """Eval colour mode and geometry only, uint8 [3, H, W], for graphs that take raw pixels."""
    return T.Compose([ToColorMode(pre.color_mode), *geometry_ops(pre), T.PILToTensor()])


def normalize_pixels(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> float32 [N, 3, H, W], exactly as ToTensor + Normalize in the eval transform."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - mean) / std).astype(np.float32))
