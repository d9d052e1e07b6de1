"""Label audit: rank the samples of a data set by how likely their given label is wrong.

The score is the fused model's probability that the given label is wrong, 1 - P(given), where P is the
stacker's output over both heads' probabilities and SCN's importance weight alpha. Beside it, each sample
carries SCN's own signals (Wang et al. 2020): alpha (low = the network could not fit the image's label)
and the relabeling rule's margin P_max - P_given over SCN's alpha-weighted softmax, with whether the rule
would relabel it (margin > delta2 and alpha in the split's low-importance share 1 - beta).
On the noisy synthetic benchmark (benchmarks/results/noisy_labels.md) 1 - P(given) ranks flipped labels
better than the SCN margin alone, alpha alone, or a rank average of the two; those figures are reported there.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.data.base import Split
from fuse_export.data.torchdata import eval_batches
from fuse_export.data.transforms import eval_transform
from fuse_export.errors import BackendUnavailable, DataError, UserError
from fuse_export.fileio import atomic_open
from fuse_export.model.fused import FusedFER, HeadOutputs
from fuse_export.train.loop import predict_heads

CSV_COLUMNS = ("rank", "index", "name", "given", "given_name", "suggested", "suggested_name", "score", "p_given",
               "p_suggested", "scn_margin", "alpha", "scn_rule")


@dataclass
class LabelAudit:
    """Per-sample audit of one split; `order` lists sample indices from most to least suspicious."""

    split: str
    class_names: tuple[str, ...]
    names: list[str]
    given: np.ndarray  # int64 [N]
    suggested: np.ndarray  # int64 [N], the fused argmax
    p_given: np.ndarray  # float [N], fused probability of the given label
    p_suggested: np.ndarray  # float [N]
    score: np.ndarray  # float [N], 1 - p_given: higher = label more likely wrong
    scn_margin: np.ndarray  # float [N], P_max - P_given over SCN's probabilities (the relabel rule's quantity)
    alpha: np.ndarray  # float [N], SCN importance weight
    scn_rule: np.ndarray  # bool [N], SCN's relabel rule fires: margin > delta2 and alpha in the low group
    order: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.given.shape[0])

    @property
    def suspects(self) -> int:
        """Samples whose given label is not the model's choice."""
        return int((self.suggested != self.given).sum())

    def row(self, rank: int) -> dict[str, Any]:
        """The CSV record of the sample at `rank` (0 = most suspicious)."""
        i = int(self.order[rank])
        g, s = int(self.given[i]), int(self.suggested[i])
        return {"rank": rank + 1, "index": i, "name": self.names[i], "given": g, "given_name": self.class_names[g],
                "suggested": s, "suggested_name": self.class_names[s], "score": round(float(self.score[i]), 6),
                "p_given": round(float(self.p_given[i]), 6), "p_suggested": round(float(self.p_suggested[i]), 6),
                "scn_margin": round(float(self.scn_margin[i]), 6), "alpha": round(float(self.alpha[i]), 6),
                "scn_rule": int(self.scn_rule[i])}


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


def audit_heads(heads: HeadOutputs, fused_logits: torch.Tensor, labels: np.ndarray, class_names: tuple[str, ...],
                split: str = "train", names: list[str] | None = None, margin2: float = 0.2,
                beta: float = 0.7) -> LabelAudit:
    """Score samples from the model's outputs (both heads, alpha, fused logits) and their given labels."""
    given = np.asarray(labels, dtype=np.int64)
    rows = np.arange(given.shape[0])
    fused = torch.softmax(fused_logits.detach().float(), dim=1).numpy().astype(np.float64)
    scn = torch.softmax(heads.scn_logits.detach().float(), dim=1).numpy().astype(np.float64)
    alpha = heads.alpha.detach().float().reshape(-1).numpy().astype(np.float64)
    suggested = fused.argmax(1)
    p_given, p_suggested = fused[rows, given], fused[rows, suggested]
    scn_margin = scn.max(1) - scn[rows, given]
    # SCN ranks alphas within a mini-batch; over a whole split the low group is its lowest (1 - beta) share.
    low = percentile_rank(alpha) < (1.0 - beta) if rows.size > 1 else np.ones(rows.size, bool)
    scn_rule = (scn_margin > margin2) & low & (scn.argmax(1) != given)
    score = 1.0 - p_given
    # Most suspicious first; ties broken by the larger SCN margin, the lower alpha, then data set order.
    order = np.lexsort((rows, alpha, -scn_margin, -score)).astype(np.int64)
    return LabelAudit(split, tuple(class_names), list(names) if names is not None else [f"#{i}" for i in rows],
                      given, suggested.astype(np.int64), p_given, p_suggested, score, scn_margin, alpha, scn_rule,
                      order)


def audit_split(model: FusedFER, preprocessing: Any, split: Split, split_name: str = "train", batch_size: int = 64,
                device: str | torch.device = "cpu", margin2: float = 0.2, beta: float = 0.7) -> LabelAudit:
    """Run the model over a split (eval transform, as at inference) and audit its labels."""
    if len(split) == 0:
        raise UserError(f"split {split_name!r} has no samples to audit")
    num_classes = model.config.num_classes
    if split.labels.size and int(split.labels.max()) >= num_classes:
        raise UserError(f"split {split_name!r} has label {int(split.labels.max())}, but the model has only "
                        f"{num_classes} classes")
    dev = torch.device(device)
    model.to(dev)
    heads = predict_heads(model, eval_batches(split, eval_transform(preprocessing), batch_size), dev)
    model.cpu()
    with torch.no_grad():
        fused = model.stack(heads)
    return audit_heads(heads, fused, split.labels, preprocessing.class_names, split_name,
                       [split.name(i) for i in range(len(split))], margin2, beta)


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when usable; asking for CUDA where there is none is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("--device cuda: no CUDA device is usable here; use --device cpu or auto")
    return torch.device(device)


def audit_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str = "train",
                     data_format: str | None = None, batch_size: int = 64, device: str = "cpu") -> LabelAudit:
    """Load a checkpoint and a data set (in the checkpoint's recipe format unless given) and audit one split."""
    from fuse_export.data.registry import load_dataset
    from fuse_export.train.checkpoint import load_model

    dev = resolve_device(device)
    loaded = load_model(checkpoint)
    data_section = loaded.state.get("recipe", {}).get("data", {})
    fmt = data_format or data_section.get("format", "fer2013-csv")
    # Options that inject synthetic label noise would corrupt the very labels under audit: leave them out.
    options = {k: v for k, v in dict(data_section.get("options", {})).items() if not str(k).startswith("noise")}
    ds = load_dataset(fmt, data, **options) if data_format is None else load_dataset(fmt, data)
    if split not in ds.splits:
        raise DataError(data, f"no split {split!r}; it has {', '.join(ds.splits)}")
    if tuple(ds.class_names) != tuple(loaded.preprocessing.class_names):
        raise DataError(data, f"class names {list(ds.class_names)} differ from the checkpoint's "
                              f"{list(loaded.preprocessing.class_names)} ({checkpoint})")
    scn = loaded.state.get("recipe", {}).get("scn", {})
    return audit_split(loaded.model, loaded.preprocessing, ds.splits[split], split, batch_size, dev,
                       float(scn.get("margin2", 0.2)), float(scn.get("beta", 0.7)))


def write_audit_csv(audit: LabelAudit, path: str | os.PathLike, top: int | None = None) -> Path:
    """All samples (or the `top` most suspicious), most suspicious first; written atomically."""
    n = len(audit) if top is None else min(top, len(audit))
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in range(n):
            writer.writerow(audit.row(r))
    return Path(path)


def audit_table(audit: LabelAudit, top: int, title: str = "") -> Any:
    """A rich table of the `top` most suspicious samples."""
    from rich.table import Table

    n = min(top, len(audit))
    table = Table(title=title or f"label audit: {audit.split} split, {len(audit)} samples, {audit.suspects} labelled "
                                 f"otherwise than the model predicts, {int(audit.scn_rule.sum())} SCN would relabel; "
                                 f"top {n}")
    for col, justify in (("Rank", "right"), ("Sample", "left"), ("Given", "left"), ("Suggested", "left"),
                         ("P(wrong)", "right"), ("P(suggested)", "right"), ("SCN margin", "right"),
                         ("Alpha", "right"), ("SCN rule", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in range(n):
        d = audit.row(r)
        table.add_row(str(d["rank"]), d["name"], d["given_name"], d["suggested_name"], f"{d['score']:.3f}",
                      f"{d['p_suggested']:.3f}", f"{d['scn_margin']:.3f}", f"{d['alpha']:.3f}",
                      "relabel" if d["scn_rule"] else "")
    return table


def precision_at_k(order: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of true positives among the first `k` of a ranking (k <= 0: NaN)."""
    if k <= 0:
        return float("nan")
    return float(np.asarray(positives, bool)[np.asarray(order)[:k]].mean())


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` separating positives from negatives (Mann-Whitney U, ties = 1/2)."""
    pos = np.asarray(positives, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = percentile_rank(np.asarray(scores, np.float64)) * (pos.size - 1) + 1.0  # 1-based, ties averaged
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
