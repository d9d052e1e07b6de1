"""Train and eval transforms, derived from the preprocessing contract (`fuse_export.contract.Preprocessing`).

The eval transform *is* the contract's definition of deployed preprocessing: colour mode, then geometry with
PIL's bilinear resize (torchvision's Resize on a PIL image), then scale to [0, 1] and normalize. The train
transform is the matching augmentation for each geometry:

* "resize-crop" (Akhand et al.'s pair): train on a random-resized crop whose share of the frame's area is centred
  on the eval crop's share of that frame ((1/resize_ratio)^2 of the short-side square, 77% at 256/224, times
  short/long side: 57% of a 562x762 KDEF frame) within +-15%, near-square aspect, plus a horizontal flip; eval
  resizes the short side and center-crops. Faces keep their scale between the two on frames of any shape.
* "squash" (SCN's released code): resize the whole frame to HxH for both, plus a flip for training.

Files are decoded before this by the deployment decoder (`fuse_export.preprocess.open_image`: EXIF orientation,
alpha, bit depth), and pixels are normalized by the deployment code (`normalize_pixels` is
`fuse_export.preprocess.normalize`): training and deployment share one implementation of each.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from fuse_export.contract import Preprocessing
from fuse_export.preprocess import normalize as normalize_pixels  # noqa: F401  (one implementation, re-exported)
from fuse_export.preprocess import resize_crop_size

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


def train_crop_scale(pre: Preprocessing, width: int = 1, height: int = 1) -> tuple[float, float]:
    """Area-share range of the training crop in a width x height frame (square by default): the eval crop's share
    of that frame, +-TRAIN_SCALE_SPREAD.

    RandomResizedCrop's scale is a share of the whole frame, while eval center-crops image_size from the frame
    resized to resize_size on its short side: on a non-square frame that crop is short/long of the short-side
    square's share, which a frame-independent range misses (deployed faces 9% larger than trained on KDEF). The
    share is taken from the deployment's own resize (`resize_crop_size`, whose long side is truncated).
    """
    new_w, new_h = resize_crop_size(width, height, pre)
    # A crop larger than the resized frame is padded at eval, never scaled: the share stops at the whole frame.
    share = min(1.0, pre.image_size / new_w) * min(1.0, pre.image_size / new_h)
    return share * (1 - TRAIN_SCALE_SPREAD), min(1.0, share * (1 + TRAIN_SCALE_SPREAD))


class FrameResizedCrop(T.RandomResizedCrop):
    """RandomResizedCrop whose scale range is train_crop_scale of each image's own width and height (the frame
    shape is known only per image), with the aspect range TRAIN_RATIO."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__(pre.image_size, scale=train_crop_scale(pre), ratio=TRAIN_RATIO)
        self.pre = pre

    def forward(self, img: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        _, height, width = F.get_dimensions(img)
        i, j, h, w = self.get_params(img, list(train_crop_scale(self.pre, width, height)), list(self.ratio))
        return F.resized_crop(img, i, j, h, w, self.size, self.interpolation, antialias=self.antialias)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale=eval crop share of each frame "
                f"+-{TRAIN_SCALE_SPREAD:.0%}, ratio={tuple(round(r, 4) for r in self.ratio)})")


def geometry_ops(pre: Preprocessing) -> list:
    """The contract's eval geometry on a PIL image."""
    if pre.geometry == "squash":
        return [T.Resize((pre.image_size, pre.image_size))]
    return [T.Resize(pre.resize_size), T.CenterCrop(pre.image_size)]


def train_geometry_ops(pre: Preprocessing) -> list:
    """The training augmentation that matches the contract's geometry (see the module docstring)."""
    if pre.geometry == "squash":
        return [T.Resize((pre.image_size, pre.image_size)), T.RandomHorizontalFlip()]
    return [FrameResizedCrop(pre), T.RandomHorizontalFlip()]


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
