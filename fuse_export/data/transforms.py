"""Train and eval transforms after the seed's section 3.3, derived from the preprocessing contract."""

from __future__ import annotations

import numpy as np
from torchvision import transforms as T

from fuse_export.contract import Preprocessing


def train_transform(pre: Preprocessing) -> T.Compose:
    """Resize to the input size, random horizontal flip, to tensor, normalize."""
    return T.Compose([
        T.Resize((pre.image_size, pre.image_size)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize to input_size * 256/224, center-crop to the input size, to tensor, normalize."""
    return T.Compose([
        T.Resize(pre.resize_size),
        T.CenterCrop(pre.image_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def eval_pixels_transform(pre: Preprocessing) -> T.Compose:
    """Eval geometry only (resize + center crop), for graphs that take raw uint8 pixels."""
    return T.Compose([T.Resize(pre.resize_size), T.CenterCrop(pre.image_size), T.PILToTensor()])


def normalize_pixels(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> float32 [N, 3, H, W], exactly as ToTensor + Normalize in the eval transform."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - mean) / std).astype(np.float32))
