"""The label audit of one split: per-sample evidence that the given label is wrong, ranked, as a table or CSV.

Each sample carries the checkpoint model's view (its fused probabilities, SCN's importance weight alpha and
the relabeling rule's margin) and is ranked by one of the scores of `fuse_export.audit.scores`, named in the
`ranked_by` column: on the training split the default is the score measured best on the noisy-label benchmark
(`DEFAULT_TRAIN_METHOD`, benchmarks/RESULTS.md); on a split the model never trained on, its own probabilities,
which are out of sample there.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.audit.scores import METHODS, aum_score, percentile_rank, ranking, threshold_margin
from fuse_export.data.base import Split
from fuse_export.data.torchdata import eval_batches
from fuse_export.data.transforms import eval_transform
from fuse_export.errors import BackendUnavailable, DataError, UserError
from fuse_export.fileio import atomic_open
from fuse_export.model.fused import FusedFER, HeadOutputs
from fuse_export.training.loop import predict_heads

CSV_COLUMNS = ("rank", "index", "name", "given", "given_name", "suggested", "suggested_name", "score", "ranked_by",
               "p_given", "p_suggested", "scn_margin", "alpha", "scn_rule")


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
    method: str = "model"  # the evidence that ranked it (scores.METHODS), as the CSV's ranked_by says
    probs: np.ndarray | None = None  # float [N, C], the fused probabilities the P columns come from
    warnings: list[str] = field(default_factory=list)

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
                "ranked_by": self.method,
                "p_given": round(float(self.p_given[i]), 6), "p_suggested": round(float(self.p_suggested[i]), 6),
                "scn_margin": round(float(self.scn_margin[i]), 6), "alpha": round(float(self.alpha[i]), 6),
                "scn_rule": int(self.scn_rule[i])}


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
                      order, probs=fused)


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


# The score a plain `audit-labels CHECKPOINT --data PATH` ranks the training split by: the one measured best on
# the noisy-label benchmark's tuning data set (benchmarks/trunk_noise.py --tuning; other faces than the reported
# runs): AUM of both heads' margins averaged, 0.728 / 0.753 precision at K at 20 / 30% noise, against 0.646 / 0.660
# for cross-fitted probabilities (4 folds) and 0.711 / 0.739 for the in-sample ones.
DEFAULT_TRAIN_METHOD = "aum"
AUM_HEAD = "mean"  # which head's margins make the AUM score ("mean": both heads' averaged; "dcnn" | "scn")
# Per-class thresholds cost 1-5 points of precision there (its classes are balanced), so they are an option for
# imbalanced sets (FER-2013's 1.5% disgust), not the default.
DEFAULT_PER_CLASS = False
IN_SAMPLE_WARNING = ("warning: --method model ranks the training split by the model's in-sample probabilities: it "
                     "trained towards those labels (and its own relabels), so wrong labels it memorised look right; "
                     "--method aum or --method crossfit rank them out of sample")


@dataclass(frozen=True)
class AuditOptions:
    """How to audit (the CLI's options). method: "auto" (the measured best for the split) or one of METHODS."""

    split: str = "train"
    method: str = "auto"
    folds: int = 5  # crossfit: fold models, each scoring the fold it did not train on
    fold_epochs: int = 0  # crossfit: epochs per fold model (0: the recipe's, capped at crossfit.MAX_FOLD_EPOCHS)
    per_class: bool = DEFAULT_PER_CLASS  # per-class thresholds (confident learning); False: raw probabilities/margins
    data_format: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True


def resolve_method(options: AuditOptions) -> str:
    """The method "auto" stands for: on the training split the measured best; elsewhere the model's own
    probabilities (out of sample there: the model never trained on that split)."""
    if options.method == "auto":
        return DEFAULT_TRAIN_METHOD if options.split == "train" else "model"
    if options.method not in METHODS:
        raise UserError(f"--method {options.method!r}: choose auto or one of {', '.join(METHODS)}")
    if options.method == "aum" and options.split != "train":
        raise UserError(f"--method aum: training dynamics exist for the train split only, not {options.split!r}; "
                        "use --method model (out of sample on that split)")
    return options.method


def rescored(audit: LabelAudit, score: np.ndarray, method: str, probs: np.ndarray | None = None) -> LabelAudit:
    """The audit ranked by another score; with `probs`, the suggestions and P columns come from them too."""
    changes: dict[str, Any] = {"score": np.asarray(score, np.float64), "order": ranking(score), "method": method}
    if probs is not None:
        rows = np.arange(len(audit))
        suggested = probs.argmax(1).astype(np.int64)
        changes.update(suggested=suggested, p_given=probs[rows, audit.given], p_suggested=probs[rows, suggested])
    return replace(audit, **changes)


def aum_of(state: dict[str, Any], checkpoint: str | os.PathLike, labels: np.ndarray,
           data: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mean margin [N] of AUM_HEAD, stage-1 mask [N]) from the checkpoint's training dynamics, for `labels`."""
    from fuse_export.training.dynamics import HEADS, TrainingDynamics

    if "training_dynamics" not in state:
        raise UserError(f"{checkpoint}: no training dynamics in this checkpoint (written before fuse-export recorded "
                        "them); use --method crossfit, or retrain")
    dyn = TrainingDynamics.from_state(state["training_dynamics"], checkpoint)
    if dyn.given.shape[0] != labels.shape[0] or not np.array_equal(dyn.given.numpy(), labels):
        raise DataError(data, f"the training dynamics in {checkpoint} were recorded on {dyn.given.shape[0]} training "
                              f"labels that differ from these {labels.shape[0]}: audit the data the checkpoint was "
                              "trained on, or use --method crossfit")
    if not dyn.epochs:
        raise UserError(f"{checkpoint}: no epoch before relabeling was recorded (scn.relabel_epoch = 1?); "
                        "use --method crossfit")
    aum = dyn.aum()
    margin = aum.mean(1) if AUM_HEAD == "mean" else aum[:, HEADS.index(AUM_HEAD)]
    return margin, dyn.trained.numpy()


def audit_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike,
                     options: AuditOptions = AuditOptions()) -> LabelAudit:
    """Load a checkpoint and a data set (as the checkpoint's training loaded it, unless a format is given) and
    audit one split."""
    from fuse_export.audit.trained_data import trained_data
    from fuse_export.training.checkpoint import load_model

    method = resolve_method(options)
    dev = resolve_device(options.device)
    loaded = load_model(checkpoint)
    recipe = loaded.state.get("recipe", {})
    ds, noted = trained_data(recipe, data, options.data_format)
    split = options.split
    if split not in ds.splits:
        raise DataError(data, f"no split {split!r}; it has {', '.join(ds.splits)}")
    if tuple(ds.class_names) != tuple(loaded.preprocessing.class_names):
        raise DataError(data, f"class names {list(ds.class_names)} differ from the checkpoint's "
                              f"{list(loaded.preprocessing.class_names)} ({checkpoint})")
    target = ds.splits[split]
    aum = aum_of(loaded.state, checkpoint, target.labels, data) if method == "aum" else None  # fail before work
    scn = recipe.get("scn", {})
    audit = audit_split(loaded.model, loaded.preprocessing, target, split, options.batch_size, dev,
                        float(scn.get("margin2", 0.2)), float(scn.get("beta", 0.7)))
    audit.warnings.extend(noted)
    if method == "aum":
        assert aum is not None
        return rescored(audit, aum_score(aum[0], audit.given, aum[1], options.per_class), "aum")
    if method == "crossfit":
        from fuse_export.audit.crossfit import crossfit_probabilities, fold_recipe

        fold = fold_recipe(recipe, str(checkpoint), data, options.fold_epochs, options.data_format)
        probs = crossfit_probabilities(fold, data, target, loaded.preprocessing, options.folds, dev,
                                       options.batch_size, options.progress)
        return rescored(audit, probability_score(probs, audit.given, options.per_class),
                        f"crossfit ({options.folds} folds, {fold.train.epochs} epochs)", probs)
    # audit_heads already ranks by 1 - P(given) (ties broken by SCN's margin, then alpha).
    out = rescored(audit, probability_score(audit.probs, audit.given), "model") if options.per_class else audit
    if split == "train":
        out.warnings.append(IN_SAMPLE_WARNING)
    return out


def probability_score(probs: np.ndarray, labels: np.ndarray, per_class: bool = True) -> np.ndarray:
    """Suspicion from probabilities: the per-class-threshold margin, or 1 - P(given) without thresholds."""
    if per_class:
        return threshold_margin(probs, labels)
    return 1.0 - probs[np.arange(labels.size), labels]


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
                                 f"ranked by {audit.method}; top {n}")
    for col, justify in (("Rank", "right"), ("Sample", "left"), ("Given", "left"), ("Suggested", "left"),
                         ("Score", "right"), ("P(suggested)", "right"), ("SCN margin", "right"),
                         ("Alpha", "right"), ("SCN rule", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in range(n):
        d = audit.row(r)
        table.add_row(str(d["rank"]), d["name"], d["given_name"], d["suggested_name"], f"{d['score']:.3f}",
                      f"{d['p_suggested']:.3f}", f"{d['scn_margin']:.3f}", f"{d['alpha']:.3f}",
                      "relabel" if d["scn_rule"] else "")
    return table
