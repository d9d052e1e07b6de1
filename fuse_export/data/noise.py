"""Synthetic label noise for experiments: symmetric flips to a different class, seeded and recorded.

As in SCN's `generate.py`, a flipped sample gets a uniformly drawn class other than its own. Unlike it,
exactly round(rate * N) samples are flipped (not each with probability `rate`), so a "20 %" run is 20 %,
and the record says which samples were flipped and what their labels were, so an experiment can measure
how many of them relabeling restores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fuse_export.data.base import Split
from fuse_export.errors import RecipeError


@dataclass
class NoiseRecord:
    """What `inject_symmetric_noise` did: indices into the split, their clean and their noisy labels."""

    rate: float
    seed: int
    flipped: np.ndarray  # int64 indices of flipped samples, sorted
    original: np.ndarray  # int64 clean labels of the flipped samples
    noisy: np.ndarray  # int64 labels they were given
    names: list[str]  # sample names of the flipped samples (they survive later subsetting)

    def flipped_mask(self, n: int) -> np.ndarray:
        """A boolean [n] mask, True where the label was flipped."""
        m = np.zeros(n, dtype=bool)
        m[self.flipped] = True
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "count": int(self.flipped.size),
                "flipped": [{"index": int(i), "name": n, "original": int(o), "noisy": int(y)}
                            for i, n, o, y in zip(self.flipped, self.names, self.original, self.noisy)]}


def inject_symmetric_noise(split: Split, rate: float, seed: int, num_classes: int) -> tuple[Split, NoiseRecord]:
    """A copy of `split` with round(rate * N) labels flipped to another class, and the record of the flips.

    Soft targets of flipped samples become one-hot on the noisy class (the vote distribution no longer applies).
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise RecipeError(f"data.options.noise_rate is {rate!r}; expected a number in [0, 1)")
    if num_classes < 2:
        raise RecipeError("label noise needs at least two classes")
    rng = np.random.default_rng(seed)
    n = len(split)
    flipped = np.sort(rng.permutation(n)[: round(rate * n)]).astype(np.int64)
    original = split.labels[flipped].copy()
    # Draw from the other num_classes - 1 classes: an offset in 1..C-1 added modulo C never lands on the original.
    noisy = (original + rng.integers(1, num_classes, size=flipped.size)) % num_classes
    # Only the labels are copied; images (possibly large) are shared with the clean split.
    out = dataclasses.replace(split, labels=split.labels.copy())
    out.labels[flipped] = noisy
    if out.soft_targets is not None and flipped.size:
        out.soft_targets = np.array(out.soft_targets, copy=True)
        out.soft_targets[flipped] = np.eye(num_classes, dtype=out.soft_targets.dtype)[noisy]
    record = NoiseRecord(float(rate), int(seed), flipped, original, noisy.astype(np.int64),
                         [split.name(int(i)) for i in flipped])
    return out, record
