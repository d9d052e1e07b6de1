"""Train and eval transforms after the seed's section 3.3, derived from the preprocessing contract."""

from __future__ import annotations

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
