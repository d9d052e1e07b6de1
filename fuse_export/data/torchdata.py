"""A torch Dataset over a `Split`: yields (image tensor, index) so the trainer owns the (mutable) labels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fuse_export.data.base import Split


class SplitDataset(Dataset):
    """Images of one split through a transform. Labels stay with the caller: SCN relabels them in place."""

    def __init__(self, split: Split, transform: Callable) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.split.load(index)), index


def eval_batches(split: Split, transform: Callable, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    """A deterministic loader over a split (no shuffle)."""
    return DataLoader(SplitDataset(split, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)


def stack_split(split: Split, transform: Callable, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The first `limit` images of a split as one tensor batch, with their labels."""
    n = len(split) if limit is None else min(limit, len(split))
    images = torch.stack([transform(split.load(i)) for i in range(n)]) if n else torch.zeros(0)
    return images, split.labels[:n]
