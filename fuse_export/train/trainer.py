"""A whole training run from a recipe: load data, stage 1 per epoch, stage 2 (stacker), checkpoints, metrics."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fuse_export.contract import Preprocessing
from fuse_export.data.base import FerDataset, Split
from fuse_export.data.registry import load_dataset
from fuse_export.data.torchdata import SplitDataset, eval_batches
from fuse_export.data.transforms import eval_transform, train_transform
from fuse_export.errors import CheckpointError, DataError, RecipeError
from fuse_export.fileio import write_json
from fuse_export.model.fused import FusedFER, ModelConfig
from fuse_export.model.stacker import fit_stacker
from fuse_export.model.weights import load_backbone_weights
from fuse_export.progress import console, progress_bar
from fuse_export.train.checkpoint import read_checkpoint, save_checkpoint
from fuse_export.train.loop import LabelState, head_accuracies, predict_heads, train_one_epoch
from fuse_export.train.metrics import plot_history, write_history
from fuse_export.train.recipe import Recipe


@dataclass
class TrainResult:
    out_dir: Path
    best: Path
    last: Path
    best_epoch: int
    test_accuracy: dict[str, float]
    history: list[dict[str, Any]]
    relabeled: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from fuse_export.errors import BackendUnavailable

        raise BackendUnavailable("--device cuda: no CUDA device is usable here; use --device cpu or auto")
    return torch.device(device)


def holdout_split(split: Split, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, holdout) indices: the holdout feeds only the stacker, never stage 1."""
    rng = np.random.default_rng(seed)
    train_idx, hold_idx = [], []
    for c in np.unique(split.labels):
        idx = rng.permutation(np.flatnonzero(split.labels == c))
        k = max(1, int(round(len(idx) * fraction))) if len(idx) > 1 else 0
        hold_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(hold_idx))


def _limit(split: Split, limit: int, seed: int) -> Split:
    if limit <= 0 or len(split) <= limit:
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))


def prepare_data(recipe: Recipe, data_path: str | None) -> FerDataset:
    path = data_path or recipe.data.path
    if not path:
        raise RecipeError(f"{recipe.source or recipe.name}: no data: pass --data PATH or set data.path")
    ds = load_dataset(recipe.data.format, path, **recipe.data.options)
    for name in ("train", "val", "test"):
        if name not in ds.splits or len(ds.splits[name]) == 0:
            raise DataError(path, f"split {name!r} is empty")
        ds.splits[name] = _limit(ds.splits[name], recipe.data.limit, recipe.train.seed)
    return ds


def build_model(recipe: Recipe, num_classes: int) -> FusedFER:
    m = recipe.model
    model = FusedFER(ModelConfig(num_classes, m.dcnn_hidden, m.dcnn_dropout, m.scn_dropout, m.shared_backbone))
    if m.pretrained:
        for trunk in filter(None, (model.backbone, model.scn_backbone)):
            report = load_backbone_weights(trunk, m.pretrained, m.allow_partial_weights)
        console.print(f"pretrained {m.pretrained}: {report.summary()}")
    return model


def make_optimizer(model: FusedFER, recipe: Recipe) -> tuple[torch.optim.Optimizer, Any]:
    t = recipe.train
    params = [p for n, p in model.named_parameters() if not n.startswith("stacker.")]
    if t.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sched: Any
    if t.scheduler == "exponential":
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=t.gamma)
    elif t.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.gamma)
    elif t.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def run_training(recipe: Recipe, data_path: str | None, out_dir: str | Path, device: str = "auto",
                 resume: bool = False, progress: bool = True) -> TrainResult:
    """Train per the recipe into `out_dir` (best.pt, last.pt, metrics.jsonl/csv, summary.json)."""
    out = Path(out_dir)
    dev = resolve_device(device)
    seed = recipe.train.seed
    torch.manual_seed(seed)
    ds = prepare_data(recipe, data_path)
    pre = Preprocessing(image_size=recipe.data.image_size, class_names=ds.class_names)
    train_idx, hold_idx = holdout_split(ds.splits["train"], recipe.stacking.holdout_fraction, seed)
    train_split, hold_split = ds.splits["train"].subset(train_idx), ds.splits["train"].subset(hold_idx)
    soft = train_split.soft_targets
    labels = LabelState(torch.from_numpy(train_split.labels.copy()), torch.from_numpy(train_split.labels.copy()),
                        None if soft is None else torch.from_numpy(np.asarray(soft, np.float32).copy()))

    model = build_model(recipe, ds.num_classes).to(dev)
    optimizer, scheduler = make_optimizer(model, recipe)
    history: list[dict[str, Any]] = []
    start_epoch, best_metric, best_epoch = 1, -math.inf, 0
    last, best = out / "last.pt", out / "best.pt"
    if resume:
        state = read_checkpoint(last)
        if state.get("class_names") != list(ds.class_names):
            raise CheckpointError(f"{last}: class names differ from the data set's; cannot resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        labels.labels = state["labels"].clone()
        if labels.soft is not None and "soft_labels" in state:
            labels.soft = state["soft_labels"].clone()
        torch.set_rng_state(state["rng"]["torch"])
        if dev.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        history = list(state["history"])
        start_epoch, best_metric, best_epoch = state["epoch"] + 1, state["best_metric"], state["best_epoch"]
        console.print(f"resumed from {last} at epoch {state['epoch']}")

    tf_train, tf_eval = train_transform(pre), eval_transform(pre)
    nw = recipe.train.num_workers
    hold_loader = eval_batches(hold_split, tf_eval, recipe.train.batch_size, nw)
    val_loader = eval_batches(ds.splits["val"], tf_eval, recipe.train.batch_size, nw)
    hold_y, val_y = torch.from_numpy(hold_split.labels), torch.from_numpy(ds.splits["val"].labels)
    recipe_dict = recipe.to_dict()
    epochs = recipe.train.epochs

    with progress_bar(progress) as bar:
        for epoch in range(start_epoch, epochs + 1):
            # Shuffle order depends only on (seed, epoch), so a resumed run sees the same batches.
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            loader = DataLoader(SplitDataset(train_split, tf_train), batch_size=recipe.train.batch_size,
                                shuffle=True, generator=gen, num_workers=nw, drop_last=len(train_split) > recipe.train.batch_size,
                                pin_memory=dev.type == "cuda")
            stats = train_one_epoch(model, loader, labels, optimizer, recipe.scn, recipe.train, epoch, dev, bar)
            scheduler.step()
            # Stage 2 at every epoch end: fit the stacker on held-out predictions of the frozen base model.
            hold = predict_heads(model, hold_loader, dev)
            fit_stacker(model.stacker, model.stacking_features(hold), hold_y, recipe.stacking.weight_decay,
                        recipe.stacking.max_iter)
            val_acc = head_accuracies(model, predict_heads(model, val_loader, dev), val_y)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": stats.loss,
                   "loss_dcnn": stats.loss_dcnn, "loss_scn": stats.loss_scn, "loss_rank": stats.loss_rank,
                   "train_acc_dcnn": stats.train_acc_dcnn, "train_acc_scn": stats.train_acc_scn,
                   "alpha_mean": stats.alpha_mean, "relabeled_epoch": stats.relabeled_epoch,
                   "relabeled_total": labels.relabeled, "val_acc_dcnn": val_acc["dcnn"],
                   "val_acc_scn": val_acc["scn"], "val_acc_fused": val_acc["fused"],
                   "seconds": stats.seconds, "images_per_s": stats.images_per_s}
            history.append(row)
            console.print(f"epoch {epoch}/{epochs}: loss {stats.loss:.3f}  val acc dcnn {val_acc['dcnn']:.3f} "
                          f"scn {val_acc['scn']:.3f} fused {val_acc['fused']:.3f}  relabeled {labels.relabeled}")
            is_best = val_acc["fused"] > best_metric
            if is_best:
                best_metric, best_epoch = val_acc["fused"], epoch
                save_checkpoint(best, model, pre, recipe_dict, epoch=epoch, metrics=row)
            rng = {"torch": torch.get_rng_state()}
            if dev.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state()
            extra = {"soft_labels": labels.soft} if labels.soft is not None else {}
            save_checkpoint(last, model, pre, recipe_dict, epoch=epoch, metrics=row, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), labels=labels.labels.clone(), rng=rng,
                            history=history, best_metric=best_metric, best_epoch=best_epoch, **extra)
            write_history(out, history)

    best_state = read_checkpoint(best)
    model.load_state_dict(best_state["model"])
    test_loader = eval_batches(ds.splits["test"], tf_eval, recipe.train.batch_size, nw)
    test_acc = head_accuracies(model, predict_heads(model, test_loader, dev), torch.from_numpy(ds.splits["test"].labels))
    summary = {"recipe": recipe.name, "data": str(data_path or recipe.data.path), "device": str(dev),
               "best_epoch": best_epoch, "val_accuracy_fused": best_metric, "test_accuracy": test_acc,
               "relabeled_total": labels.relabeled, "train_samples": len(train_split),
               "holdout_samples": len(hold_split), "class_names": list(ds.class_names),
               "splits": ds.counts()}
    write_json(out / "summary.json", summary)
    plot_history(out, history)
    console.print(f"test accuracy (best epoch {best_epoch}): " + json.dumps({k: round(v, 4) for k, v in test_acc.items()}))
    return TrainResult(out, best, last, best_epoch, test_acc, history, labels.relabeled)
