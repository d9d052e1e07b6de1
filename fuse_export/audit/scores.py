"""How suspicious each label is: the audit's scores, in numpy alone (no model, no torch).

Three sources of evidence, named by `METHODS`:

* "aum": training dynamics. The area under the margin (Pleiss et al. 2020): the given label's logit minus the
  largest other logit, averaged over the epochs before relabeling (recorded by the trainer,
  `fuse_export.training.dynamics`). A wrong label is learnt late, so its margin stays low while a clean one's rises.
* "crossfit": out-of-sample probabilities from K models, each scoring the fold it did not train on
  (`fuse_export.audit.crossfit`); confident learning's setting (Northcutt et al. 2021).
* "model": the checkpoint's own probabilities. On the training split they are in-sample (the model trained
  towards those very labels, and towards its own relabels), so they flatter wrong labels it memorised; on a
  split it never trained on they are out of sample.

Per-class thresholds (confident learning): a class whose clean samples the model is unsure of (FER-2013's
disgust, 1.5% of the set) would flood the top of a raw ranking. Probabilities are compared with each class's
threshold t_j, the mean probability of class j over the samples labelled j, and a sample's score is the margin
max_{j != y} (p_j - t_j) - (p_y - t_y): positive when another class clears its threshold by more than the given
class clears its own. Margins (AUM) are compared with the median margin of their labelled class likewise.
"""

from __future__ import annotations

import numpy as np

METHODS = ("aum", "crossfit", "model")


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank), so differently scaled signals can be compared."""
    n = x.shape[0]
    if n < 2:
        return np.full(n, 0.5)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / (n - 1)


def confident_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class j, the mean probability of j over the samples labelled j (1/C for a class with none)."""
    n, c = probs.shape
    t = np.full(c, 1.0 / c)
    for j in range(c):
        mask = labels == j
        if mask.any():
            t[j] = float(probs[mask, j].mean())
    return t


def threshold_margin(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """max_{j != y}(p_j - t_j) - (p_y - t_y) per sample: higher = label more likely wrong.

    `thresholds=None` derives them from `probs` and `labels` (confident learning); zeros give the plain margin.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    t = confident_thresholds(probs, labels) if thresholds is None else np.asarray(thresholds, np.float64)
    adj = probs - t[None, :]
    rows = np.arange(labels.size)
    own = adj[rows, labels]
    adj[rows, labels] = -np.inf
    return adj.max(1) - own


def class_centred(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`values` minus the median of the samples with the same label (the per-class threshold for margins)."""
    out = np.asarray(values, np.float64).copy()
    for j in np.unique(labels):
        mask = labels == j
        out[mask] -= np.median(out[mask])
    return out


def aum_score(aum: np.ndarray, labels: np.ndarray, trained: np.ndarray, per_class: bool = True) -> np.ndarray:
    """Suspicion from the mean margins (higher = more likely wrong), on one scale for all rows.

    Stage-1 rows' margins are in-sample and the holdout rows' out of sample: their distributions differ, so each
    group is ranked within itself (percentiles) before the two are merged; rows never recorded score lowest.
    """
    aum = np.asarray(aum, np.float64)
    labels = np.asarray(labels, np.int64)
    score = np.full(aum.shape[0], -np.inf)
    for group in (np.asarray(trained, bool), ~np.asarray(trained, bool)):
        rows = np.flatnonzero(group & np.isfinite(aum))
        if rows.size:
            m = class_centred(aum[rows], labels[rows]) if per_class else aum[rows]
            score[rows] = percentile_rank(-m)
    return score


def precision_at_k(order: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of true positives among the first `k` of a ranking (k <= 0: NaN)."""
    if k <= 0:
        return float("nan")
    return float(np.asarray(positives, bool)[np.asarray(order)[:k]].mean())


def recall_at_k(order: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of all positives found in the first `k` of a ranking (no positives: NaN)."""
    pos = np.asarray(positives, bool)
    if not pos.any():
        return float("nan")
    return float(pos[np.asarray(order)[:k]].sum() / pos.sum())


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` separating positives from negatives (Mann-Whitney U, ties = 1/2)."""
    pos = np.asarray(positives, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = percentile_rank(np.asarray(scores, np.float64)) * (pos.size - 1) + 1.0  # 1-based, ties averaged
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ranking(score: np.ndarray) -> np.ndarray:
    """Sample indices, most suspicious first (ties in data set order)."""
    score = np.asarray(score, np.float64)
    return np.lexsort((np.arange(score.size), -score)).astype(np.int64)
