"""Deterministic splits: a stratified validation split carved from train, and k folds by identity.

Sets without a validation split (RAF-DB, FER-2013 folders, KDEF) get one carved from their training split,
stratified by class and seeded, so the same options always give the same split. KDEF is split by identity
(subject-independent): every picture of a person lands in the same split, never some in train and some in test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fuse_export.data.base import Split
from fuse_export.errors import RecipeError


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout) sorted indices; each class with two or more samples gives round(n * fraction), at least 1."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep, hold = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if len(idx) > 1 else 0
        hold.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


def carve_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val) where val is a stratified `fraction` of the given training split."""
    keep, hold = stratified_holdout(train.labels, fraction, seed)
    return train.subset(keep), train.subset(hold)


def group_order(groups: Sequence[str], seed: int, strata: Mapping[str, str] | None = None) -> list[str]:
    """The distinct groups in a seeded order; with `strata` (e.g. gender per identity) strata alternate evenly."""
    rng = np.random.default_rng(seed)
    uniq = sorted(set(groups))
    by_stratum: dict[str, list[str]] = {}
    for g in uniq:
        by_stratum.setdefault(strata[g] if strata else "", []).append(g)
    # Interleave the permuted strata by rank: position i of a stratum of size n sits at i/n of the order,
    # so any contiguous or round-robin cut takes every stratum in proportion.
    keyed = []
    for s in sorted(by_stratum):
        members = [by_stratum[s][i] for i in rng.permutation(len(by_stratum[s]))]
        keyed += [((i + 0.5) / len(members), s, g) for i, g in enumerate(members)]
    return [g for _, _, g in sorted(keyed)]


def group_splits(groups: Sequence[str], folds: int, fold: int, val_fraction: float, seed: int,
                 strata: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Sample indices for train/val/test by group: fold `fold` of `folds` is test, val is carved from the rest."""
    order = group_order(groups, seed, strata)
    if folds < 2 or folds > len(order):
        raise RecipeError(f"data.options.folds is {folds}; expected 2..{len(order)} (the number of identities)")
    if not 0 <= fold < folds:
        raise RecipeError(f"data.options.fold is {fold}; expected 0..{folds - 1}")
    test_groups = set(order[fold::folds])
    rest = [g for g in order if g not in test_groups]
    n_val = min(len(rest) - 1, max(1, round(len(rest) * val_fraction)))
    if n_val < 1:
        raise RecipeError(f"{len(order)} identities are too few for train, val and test splits")
    val_groups = {rest[int(p)] for p in np.linspace(0, len(rest) - 1, n_val).round()}
    arr = np.asarray(groups)
    test = np.isin(arr, list(test_groups))
    val = np.isin(arr, list(val_groups))
    return {"train": np.flatnonzero(~test & ~val), "val": np.flatnonzero(val), "test": np.flatnonzero(test)}
