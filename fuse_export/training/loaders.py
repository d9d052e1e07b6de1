"""Data loaders for training at any world size.

- Training: a `DistributedSampler` (also for a world of one) shuffles by (seed, epoch) and deals rank r the
  positions r, r + W, r + 2W, ... of that permutation, so at each step the union of the ranks' batches is
  exactly the batch a single process would draw with the same global batch size.
- Augmentation is seeded per (seed, epoch, sample index): a sample's flip does not depend on the worker,
  the rank or whether the run was resumed.
- Evaluation: each rank predicts a contiguous shard; the trainer gathers the shards back in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from fuse_export.data.base import Split
from fuse_export.training.distributed import DistContext
from fuse_export.training.state import AUGMENT, SeededDraws, derive_seed


class EpochSampler(DistributedSampler):
    """A DistributedSampler that yields (epoch, index), so persistent workers learn the epoch with each sample."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, i) for i in super().__iter__())


class SeededSplitDataset(Dataset):
    """Images of a split through a random transform whose draws are a function of (seed, epoch, index)."""

    def __init__(self, split: Split, transform: Callable, seed: int) -> None:
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        image = self.split.load(index)
        # In a worker process nothing else uses the generators, so they need not be put back.
        with SeededDraws(derive_seed(self.seed, AUGMENT, epoch, index), restore=get_worker_info() is None):
            return self.transform(image), index


def _loader_generator(seed: int, rank: int) -> torch.Generator:
    # Worker base seeds come from here rather than from the global generator, which dropout owns.
    return torch.Generator().manual_seed(derive_seed(seed, AUGMENT, rank))


def train_loader(split: Split, transform: Callable, per_rank_batch: int, ctx: DistContext, seed: int,
                 num_workers: int) -> DataLoader:
    """The training loader for this rank. Call `loader.sampler.set_epoch(epoch)` before each epoch."""
    sampler = EpochSampler(SeededSplitDataset(split, transform, seed), num_replicas=ctx.world_size,
                           rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
    # drop_last in the sampler: no sample is seen twice in an epoch (its relabel would race with itself);
    # drop_last in the loader: a 1-sample batch breaks BatchNorm and cannot form two importance groups.
    return DataLoader(sampler.dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=num_workers,
                      drop_last=sampler.num_samples > per_rank_batch, pin_memory=ctx.device.type == "cuda",
                      persistent_workers=num_workers > 0, generator=_loader_generator(seed, ctx.rank))


class _IndexedDataset(Dataset):
    def __init__(self, split: Split, transform: Callable, indices: np.ndarray) -> None:
        self.split, self.transform, self.indices = split, transform, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        return self.transform(self.split.load(index)), index


def shard(n: int, ctx: DistContext) -> np.ndarray:
    """This rank's contiguous share of range(n); shards in rank order concatenate back to range(n)."""
    return np.array_split(np.arange(n), ctx.world_size)[ctx.rank]


def eval_loader(split: Split, transform: Callable, batch_size: int, ctx: DistContext, num_workers: int) -> DataLoader:
    """A deterministic loader over this rank's shard of a split (no shuffling, no dropped samples)."""
    return DataLoader(_IndexedDataset(split, transform, shard(len(split), ctx)), batch_size=batch_size,
                      shuffle=False, num_workers=num_workers, pin_memory=ctx.device.type == "cuda",
                      generator=_loader_generator(0, ctx.rank))
