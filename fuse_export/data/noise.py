"""Synthetic label noise for experiments: flips to another class, seeded and recorded.

* symmetric: as in SCN's `generate.py`, a flipped sample gets a uniformly drawn class other than its own.
  Unlike it, exactly round(rate * N) samples are flipped (not each with probability `rate`), so a "20 %" run
  is 20 %.
* asymmetric: the mistakes annotators make: round(rate * N_c) samples of each class c that has a confusable
  partner (fear <-> surprise, sad <-> neutral, angry <-> disgust) get the partner's label; other classes
  (happy, contempt) keep theirs, so the overall rate is below `rate`.

The record says which samples were flipped and what their labels were, so an experiment can measure how many
of them relabeling restores.
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
    kind: str = "symmetric"  # one of NOISE_KINDS

    def flipped_mask(self, n: int) -> np.ndarray:
        """A boolean [n] mask, True where the label was flipped."""
        m = np.zeros(n, dtype=bool)
        m[self.flipped] = True
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate, "seed": self.seed, "count": int(self.flipped.size),
                "flipped": [{"index": int(i), "name": n, "original": int(o), "noisy": int(y)}
                            for i, n, o, y in zip(self.flipped, self.names, self.original, self.noisy)]}


NOISE_KINDS = ("symmetric", "asymmetric")
# Expressions annotators confuse (each pair both ways), by canonical name; _CANONICAL maps data sets' spellings.
CONFUSABLE = (("fear", "surprise"), ("sad", "neutral"), ("angry", "disgust"))
_CANONICAL = {"afraid": "fear", "fearful": "fear", "sadness": "sad", "anger": "angry", "disgusted": "disgust",
              "surprised": "surprise"}


def _check_rate(rate: float, num_classes: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise RecipeError(f"data.options.noise_rate is {rate!r}; expected a number in [0, 1)")
    if num_classes < 2:
        raise RecipeError("label noise needs at least two classes")


def confusable_partner(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Per class index, the index of its confusable partner (CONFUSABLE), or -1 where it has none here."""
    canon = [_CANONICAL.get(c.lower(), c.lower()) for c in class_names]
    partner = np.full(len(canon), -1, dtype=np.int64)
    for a, b in CONFUSABLE:
        if a in canon and b in canon:
            partner[canon.index(a)], partner[canon.index(b)] = canon.index(b), canon.index(a)
    return partner


def inject_symmetric_noise(split: Split, rate: float, seed: int, num_classes: int) -> tuple[Split, NoiseRecord]:
    """A copy of `split` with round(rate * N) labels flipped to another class, and the record of the flips.

    Soft targets of flipped samples become one-hot on the noisy class (the vote distribution no longer applies).
    """
    _check_rate(rate, num_classes)
    rng = np.random.default_rng(seed)
    n = len(split)
    flipped = np.sort(rng.permutation(n)[: round(rate * n)]).astype(np.int64)
    original = split.labels[flipped].copy()
    # Draw from the other num_classes - 1 classes: an offset in 1..C-1 added modulo C never lands on the original.
    noisy = (original + rng.integers(1, num_classes, size=flipped.size)) % num_classes
    return _apply(split, rate, seed, flipped, original, noisy, num_classes, "symmetric")


def inject_asymmetric_noise(split: Split, rate: float, seed: int,
                            class_names: tuple[str, ...] | list[str]) -> tuple[Split, NoiseRecord]:
    """A copy of `split` where round(rate * N_c) samples of each class with a confusable partner carry the
    partner's label (see CONFUSABLE), and the record of the flips."""
    num_classes = len(class_names)
    _check_rate(rate, num_classes)
    partner = confusable_partner(class_names)
    if not (partner >= 0).any():
        raise RecipeError(f"asymmetric label noise: none of the classes {list(class_names)} has a confusable "
                          f"partner ({', '.join('<->'.join(p) for p in CONFUSABLE)}); use noise_kind = \"symmetric\"")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(split.labels == c))[: round(rate * int((split.labels == c).sum()))]
              for c in range(num_classes) if partner[c] >= 0]
    flipped = np.sort(np.concatenate(chosen)).astype(np.int64)
    original = split.labels[flipped].copy()
    return _apply(split, rate, seed, flipped, original, partner[original], num_classes, "asymmetric")


def _apply(split: Split, rate: float, seed: int, flipped: np.ndarray, original: np.ndarray, noisy: np.ndarray,
           num_classes: int, kind: str) -> tuple[Split, NoiseRecord]:
    # Only the labels are copied; images (possibly large) are shared with the clean split.
    out = dataclasses.replace(split, labels=split.labels.copy())
    out.labels[flipped] = noisy
    if out.soft_targets is not None and flipped.size:
        out.soft_targets = np.array(out.soft_targets, copy=True)
        out.soft_targets[flipped] = np.eye(num_classes, dtype=out.soft_targets.dtype)[noisy]
    record = NoiseRecord(float(rate), int(seed), flipped, original, noisy.astype(np.int64),
                         [split.name(int(i)) for i in flipped], kind)
    return out, record
