"""Cross-fitted probabilities: K short models, each trained on K-1 folds of the split, score the fold they never saw.

The probabilities a model gives its own training samples are in-sample: it trained towards those very labels
(and, with SCN, towards its own relabels), so a wrong label it has memorised looks right. Confident learning
(Northcutt et al. 2021) ranks labels by out-of-sample probabilities instead; cross-fitting gives every sample
one. Each fold model follows the checkpoint's recipe (same data format, trunk weights, schedule), with its epochs
capped: a model stopped before it memorises the noise scores the held-out fold better, and K models cost K runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.contract import Preprocessing
from fuse_export.data.base import Split
from fuse_export.data.torchdata import eval_batches
from fuse_export.data.transforms import eval_transform
from fuse_export.errors import UserError
from fuse_export.progress import console
from fuse_export.training.loop import predict_heads
from fuse_export.training.recipe import Recipe, recipe_from_dict
from fuse_export.training.trainer import run_training

# Epochs of a fold model when the recipe asks for more (the noisy-label benchmark's choice, on a tuning data set).
MAX_FOLD_EPOCHS = 8


def fold_assignment(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per sample, stratified by label (each class dealt round-robin over the folds)."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    out = np.empty(labels.size, np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (np.arange(idx.size) + start) % folds
        start += idx.size  # continue the deal, so small classes do not all start at fold 0
    return out


def fold_recipe(recipe_dict: dict[str, Any], source: str, data: str | os.PathLike, fold_epochs: int,
                data_format: str | None = None) -> Recipe:
    """The checkpoint's recipe for a fold model: its epochs capped, its data loaded as the audit loads it
    (audit.trained_data: the recipe's options, label noise and data.limit included, so the fold models train on the
    audited labels and rows); with `data_format`, that format without options or limit."""
    recipe = recipe_from_dict(recipe_dict, source)
    data_changes: dict[str, Any] = {"path": str(data)}
    if data_format is not None:
        data_changes.update(format=data_format, options={}, limit=0)
    epochs = fold_epochs or min(recipe.train.epochs, MAX_FOLD_EPOCHS)
    return recipe.replace(data=data_changes, train={"epochs": epochs})


def fold_probabilities(recipe: Recipe, data: str | os.PathLike, split: Split, pre: Preprocessing, fold: np.ndarray,
                       k: int, out: str | os.PathLike, device: torch.device = torch.device("cpu"),
                       batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Train the model of fold `k` (on the rows whose fold differs) into `out`; its fused probabilities for the
    rows of fold `k`, float64 [rows, C]."""
    result = run_training(recipe, str(data), out, device=str(device), progress=progress,
                          train_rows=np.flatnonzero(fold != k))
    model = result.model
    assert model is not None
    held = split.subset(np.flatnonzero(fold == k))
    heads = predict_heads(model.to(device), eval_batches(held, eval_transform(pre), batch_size), device)
    model.cpu()
    with torch.no_grad():
        return torch.softmax(model.stack(heads).float(), 1).numpy().astype(np.float64)


def crossfit_probabilities(recipe: Recipe, data: str | os.PathLike, split: Split, pre: Preprocessing, folds: int,
                           device: torch.device = torch.device("cpu"), batch_size: int = 64, progress: bool = True,
                           seed: int = 0, work: str | os.PathLike | None = None) -> np.ndarray:
    """Fused probabilities float64 [N, C] for every sample of `split` (the data set's train split), each from
    the fold model that did not train on it."""
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-fitting needs at least 2 folds")
    counts = np.bincount(split.labels)
    if len(split) < 2 * folds or counts[counts > 0].min() < folds:
        raise UserError(f"--folds {folds}: the split has {len(split)} samples and a class with only "
                        f"{int(counts[counts > 0].min())}; every fold needs every class: use fewer folds")
    fold = fold_assignment(split.labels, folds, seed)
    probs: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="fuse-export-crossfit-", dir=work) as tmp:
        for k in range(folds):
            if progress:
                console.print(f"cross-fitting: fold model {k + 1}/{folds} ({recipe.train.epochs} epochs, "
                              f"{int((fold != k).sum())} training samples, scoring {int((fold == k).sum())})")
            run = Path(tmp) / f"fold{k}"
            p = fold_probabilities(recipe, data, split, pre, fold, k, run, device, batch_size, progress)
            if probs is None:
                probs = np.zeros((len(split), p.shape[1]))
            probs[fold == k] = p
            for ckpt in run.glob("*.pt"):  # weights + optimizer state: free the disk now
                ckpt.unlink()
    assert probs is not None
    return probs
