"""A whole training run from a recipe: data, stage 1 per epoch, stage 2 (stacker), checkpoints, metrics.

One process (`fuse-export train`) or many (`torchrun --nproc-per-node N -m fuse_export train`): the code is
the same. Under torchrun every rank trains its share of each global batch with DistributedDataParallel,
SCN's labels and the stacker stay identical on every rank, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fuse_export.contract import Preprocessing
from fuse_export.data.reports import write_data_reports
from fuse_export.data.transforms import eval_transform, train_transform
from fuse_export.errors import CheckpointError
from fuse_export.fileio import write_json
from fuse_export.model.fused import FusedFER
from fuse_export.progress import console, progress_bar
from fuse_export.training.build import (build_model, fetch_pretrained_on_main, holdout_split, make_optimizer,
                                     prepare_data, training_network)
from fuse_export.training.checkpoint import (check_resume_state, read_checkpoint_on_main, remove_stale_temporaries,
                                         run_folder, save_checkpoint)
from fuse_export.training.distributed import (DistContext, all_gather_object, barrier, broadcast_module, broadcast_object,
                                           check_batch_split, setup, teardown)
from fuse_export.training.dynamics import EpochMargins, TrainingDynamics
from fuse_export.training.loaders import eval_loader, train_loader
from fuse_export.training.loop import LabelState, gather_heads, head_accuracies, predict_heads, train_one_epoch
from fuse_export.training.metrics import TensorBoardLog, plot_history, write_history
from fuse_export.training.recipe import Recipe
from fuse_export.training.stacking import StackerChoice, choose_stacker, summary_line
from fuse_export.training.speed import configure_backends, make_precision
from fuse_export.training.state import DROPOUT, capture_rng, derive_seed, restore_rng, seed_rank

# Re-exported: callers built before the split import these from here.
__all__ = ["TrainResult", "run_training", "prepare_data", "holdout_split", "build_model", "make_optimizer"]

EpochCallback = Callable[[int, dict[str, Any]], None]
TransformPair = Callable[[Preprocessing], tuple[Callable, Callable]]


@dataclass
class TrainResult:
    out_dir: Path
    best: Path
    last: Path
    best_epoch: int
    test_accuracy: dict[str, float]
    history: list[dict[str, Any]]
    relabeled: int
    labels: torch.Tensor | None = None  # the training split's labels after relabeling (identical on every rank)
    model: FusedFER | None = None  # with the best epoch's weights, as evaluated on the test split
    rank: int = 0
    world_size: int = 1
    dynamics: TrainingDynamics | None = None  # per-sample margins of the given labels (the label audit's AUM)


def run_training(recipe: Recipe, data_path: str | None, out_dir: str | Path, device: str = "auto",
                 resume: bool = False, progress: bool = True,
                 on_epoch_end: EpochCallback | None = None,
                 transforms: TransformPair | None = None, train_rows: np.ndarray | None = None) -> TrainResult:
    """Train per the recipe into `out_dir` (best.pt, last.pt, metrics.jsonl/csv, summary.json, curves).

    Under torchrun (or inside an initialized process group) this is one rank of a distributed run.
    `on_epoch_end(epoch, metrics_row)` runs on every rank after each epoch's checkpoint is written.
    `transforms(pre) -> (train, eval)` replaces the contract's transforms: for ablations only (a model trained
    so carries a preprocessing contract its training did not follow).
    `train_rows` restricts training to those rows of the train split (the label audit's cross-fitting).
    """
    ctx = setup(device)
    try:
        # The main process holds the run folder (one writer; no overwrite of an earlier run without --resume).
        with run_folder(out_dir, resume) if ctx.is_main else contextlib.nullcontext():
            return _train(recipe, data_path, Path(out_dir), ctx, resume, progress, on_epoch_end, transforms, train_rows)
    finally:
        teardown(ctx)


def _quiet(*_: Any, **__: Any) -> None:
    return None


def _check_same_data(state: dict[str, Any], last: Path, given: np.ndarray, trained: int) -> None:
    """Refuse to resume on another data set: the checkpoint's per-sample labels (and margins) are indexed by the
    training split it was written with, so another split would fail deep in the loop, or mislabel silently."""
    dynamics = state.get("training_dynamics")
    saved = dynamics.get("given") if isinstance(dynamics, dict) else None  # the split's labels as loaded
    labels = state.get("labels")
    same = (saved is None or (len(saved) == len(given) and bool((np.asarray(saved) == given).all()))) and \
        (labels is None or len(labels) == trained)
    if not same:
        n = len(saved) if saved is not None else "?"
        raise CheckpointError(f"{last}: trained on another data set ({n} training samples; this one has "
                              f"{len(given)}, or other labels) or another stacking.holdout_fraction; resume with the "
                              "data and recipe that run used, or start a new run without --resume")


def _train(recipe: Recipe, data_path: str | None, out: Path, ctx: DistContext, resume: bool, progress: bool,
           on_epoch_end: EpochCallback | None, transforms: TransformPair | None = None,
           train_rows: np.ndarray | None = None) -> TrainResult:
    log = console.print if ctx.is_main else _quiet
    dev, seed, t = ctx.device, recipe.train.seed, recipe.train
    per_rank_batch = check_batch_split(t.batch_size, ctx, recipe.source or recipe.name)
    configure_backends(dev, t.deterministic)
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    ds = prepare_data(recipe, data_path)
    if train_rows is not None:
        ds.splits["train"] = ds.splits["train"].subset(np.asarray(train_rows, np.int64))
    # The contract the checkpoint carries: the data set's colour (gray sets stay gray at deployment) and the
    # recipe's geometry; the transforms below derive from it.
    pre = Preprocessing(image_size=recipe.data.image_size, class_names=ds.class_names, color_mode=ds.color_mode,
                        geometry=recipe.data.geometry)
    train_idx, hold_idx = holdout_split(ds.splits["train"], recipe.stacking.holdout_fraction, seed)
    train_split, hold_split = ds.splits["train"].subset(train_idx), ds.splits["train"].subset(hold_idx)
    soft = train_split.soft_targets
    labels = LabelState(torch.from_numpy(train_split.labels.copy()), torch.from_numpy(train_split.labels.copy()),
                        None if soft is None else torch.from_numpy(np.asarray(soft, np.float32).copy()))
    dynamics = TrainingDynamics.start(ds.splits["train"].labels, train_idx)

    fetch_pretrained_on_main(recipe, ctx)  # a download happens once, on rank 0, before any rank reads the file
    model = build_model(recipe, ds.num_classes, log).to(dev)
    optimizer, scheduler = make_optimizer(model, recipe)
    precision = make_precision(t.amp, dev)
    history: list[dict[str, Any]] = []
    start_epoch, best_metric, best_epoch = 1, -math.inf, 0
    best_weights: dict[str, torch.Tensor] | None = None
    best_stacking: dict[str, Any] | None = None  # stage 2's record at the best epoch
    rng_states: list[dict[str, Any]] | None = None
    last, best = out / "last.pt", out / "best.pt"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        for line in write_data_reports(ds, out):  # bad_files.txt, label_noise.json: nothing left out silently
            log(line, soft_wrap=True, markup=False, highlight=False)  # one line each, however long
    if resume:
        state = read_checkpoint_on_main(last, ctx)
        check_resume_state(state, last, model)
        if state.get("class_names") != list(ds.class_names):
            raise CheckpointError(f"{last}: class names differ from the data set's; cannot resume")
        _check_same_data(state, last, ds.splits["train"].labels, len(train_split))
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as exc:  # another architecture, stacker kind or optimizer layout
            raise CheckpointError(f"{last}: cannot resume with this recipe and fuse-export version "
                                  f"({str(exc).splitlines()[0][:200]}); start a new run (without --resume)") from None
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        labels.labels = state["labels"].clone()
        if "training_dynamics" in state:  # runs from before the audit's AUM have none: it restarts empty
            dynamics = TrainingDynamics.from_state(state["training_dynamics"], last)
        if labels.soft is not None and "soft_labels" in state:
            labels.soft = state["soft_labels"].clone()
        history = list(state["history"])
        start_epoch, best_metric, best_epoch = state["epoch"] + 1, state["best_metric"], state["best_epoch"]
        best_stacking = state.get("best_stacking")
        best_weights = read_checkpoint_on_main(best, ctx)["model"]
        saved_rng = state["rng"]
        rng_states = saved_rng if isinstance(saved_rng, list) else [saved_rng]  # format 1 held one dict
        saved_world = int(state.get("world_size", len(rng_states)))
        log(f"resumed from {last} at epoch {state['epoch']}")
        if saved_world != ctx.world_size:
            log(f"note: {last} was written by {saved_world} process(es), this run has {ctx.world_size}: the "
                "data order per step and the dropout streams differ from an uninterrupted run")
            rng_states = None

    net = training_network(model, recipe, ctx)
    tf_train, tf_eval = transforms(pre) if transforms is not None else (train_transform(pre), eval_transform(pre))
    nw = t.num_workers
    train_dl = train_loader(train_split, tf_train, per_rank_batch, ctx, seed, nw)
    hold_dl = eval_loader(hold_split, tf_eval, per_rank_batch, ctx, nw)
    val_dl = eval_loader(ds.splits["val"], tf_eval, per_rank_batch, ctx, nw)
    hold_y, val_y = torch.from_numpy(hold_split.labels), torch.from_numpy(ds.splits["val"].labels)
    recipe_dict = recipe.to_dict()
    if data_path or recipe.data.path:  # what was trained on (--data wins): `export` verifies on its test split
        recipe_dict["data"]["path"] = str(Path(data_path or recipe.data.path).resolve())
    # Last before the loop, so the generators continue exactly where the checkpoint left them.
    if rng_states is not None:
        restore_rng(rng_states[ctx.rank], dev)
    elif resume:
        torch.manual_seed(derive_seed(seed, DROPOUT, ctx.rank, start_epoch))
    else:
        seed_rank(seed, ctx.rank)

    with TensorBoardLog(out, start_epoch, enabled=ctx.is_main) as tensorboard, \
            progress_bar(progress and ctx.is_main) as bar:
        for epoch in range(start_epoch, t.epochs + 1):
            train_dl.sampler.set_epoch(epoch)  # type: ignore[union-attr]
            margins = (EpochMargins(len(train_split), dev)
                       if TrainingDynamics.records(epoch, recipe.scn.relabel_epoch) else None)
            stats = train_one_epoch(net, model, train_dl, labels, optimizer, precision, recipe.scn, t, epoch, ctx,
                                    bar, margins)
            scheduler.step()
            # DDP keeps the parameters equal, but each rank's BatchNorm statistics saw only its own batches;
            # rank 0's are the ones DDP hands every rank before each forward, so they are the model's.
            broadcast_module(model, ctx, buffers_only=True)
            # Stage 2 at every epoch end: fit the stacker on held-out predictions of the frozen base model.
            # Rank 0 fits and broadcasts: L-BFGS is only bitwise repeatable on identical hardware and
            # libraries, which nodes of one job need not share; a broadcast of ~120 floats costs nothing.
            hold = gather_heads(predict_heads(model, hold_dl, dev, t.channels_last), ctx)
            if margins is not None:
                dynamics.add_epoch(epoch, train_idx, margins.reduced(ctx), hold_idx, hold.dcnn_logits, hold.scn_logits)
            choice: StackerChoice | None = None
            if ctx.is_main:
                sk = recipe.stacking
                choice = choose_stacker(model.stacker, model.stacking_features(hold), hold_y, select=sk.select,
                                        folds=sk.folds, strengths=sk.strengths, weight_decay=sk.weight_decay,
                                        max_iter=sk.max_iter, seed=seed)
            broadcast_module(model.stacker, ctx)
            val_acc = head_accuracies(model, gather_heads(predict_heads(model, val_dl, dev, t.channels_last), ctx),
                                      val_y)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": stats.loss,
                   "loss_dcnn": stats.loss_dcnn, "loss_scn": stats.loss_scn, "loss_rank": stats.loss_rank,
                   "train_acc_dcnn": stats.train_acc_dcnn, "train_acc_scn": stats.train_acc_scn,
                   "alpha_mean": stats.alpha_mean, "relabeled_epoch": stats.relabeled_epoch,
                   "relabeled_total": labels.relabeled, "val_acc_dcnn": val_acc["dcnn"],
                   "val_acc_scn": val_acc["scn"], "val_acc_fused": val_acc["fused"],
                   "seconds": stats.seconds, "images_per_s": stats.images_per_s,
                   # rank 0 chose; every rank's history records its choice (histories are equal across ranks)
                   "stacker": broadcast_object(choice.winner if choice else None, ctx)}
            history.append(row)
            log(f"epoch {epoch}/{t.epochs}: loss {stats.loss:.3f}  val acc dcnn {val_acc['dcnn']:.3f} "
                f"scn {val_acc['scn']:.3f} fused {val_acc['fused']:.3f}  relabeled {labels.relabeled}  "
                f"{stats.images_per_s:.0f} img/s")
            if val_acc["fused"] > best_metric or best_epoch == 0:
                best_metric, best_epoch = val_acc["fused"], epoch
                best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if ctx.is_main:
                    best_stacking = choice.to_dict() if choice else None
                    save_checkpoint(best, model, pre, recipe_dict, epoch=epoch, metrics=row,
                                    training_dynamics=dynamics.state(), stacking=choice.to_dict() if choice else None)
            rng = all_gather_object(capture_rng(dev), ctx)  # every rank's generators, in rank order
            if ctx.is_main:
                extra = {"soft_labels": labels.soft} if labels.soft is not None else {}
                save_checkpoint(last, model, pre, recipe_dict, epoch=epoch, metrics=row,
                                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                scaler=precision.scaler.state_dict(), labels=labels.labels.clone(), rng=rng,
                                history=history, best_metric=best_metric, best_epoch=best_epoch,
                                world_size=ctx.world_size, training_dynamics=dynamics.state(),
                                stacking=choice.to_dict() if choice else None, best_stacking=best_stacking,
                                **extra)
                write_history(out, history)
                tensorboard.log(row)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)

    if best_weights is None:
        raise CheckpointError(f"{out}: no epoch was trained and no best checkpoint exists")
    model.load_state_dict(best_weights)
    test_split = ds.splits["test"]
    test_dl = eval_loader(test_split, tf_eval, per_rank_batch, ctx, nw)
    test_acc = head_accuracies(model, gather_heads(predict_heads(model, test_dl, dev, t.channels_last), ctx),
                               torch.from_numpy(test_split.labels))
    if ctx.is_main:
        summary = {"recipe": recipe.name, "data": str(data_path or recipe.data.path), "device": str(dev),
                   "world_size": ctx.world_size, "global_batch_size": t.batch_size, "amp": t.amp,
                   "best_epoch": best_epoch, "val_accuracy_fused": best_metric, "test_accuracy": test_acc,
                   "relabeled_total": labels.relabeled, "train_samples": len(train_split),
                   "holdout_samples": len(hold_split), "class_names": list(ds.class_names),
                   "splits": ds.counts(),
                   # Stage 2 of the best epoch: every candidate's cross-validated scores and the winner.
                   "stacking": best_stacking}
        write_json(out / "summary.json", summary)
        plot_history(out, history)
        if best_stacking is not None:
            log(summary_line(best_stacking))
        log(f"test accuracy (best epoch {best_epoch}): " + json.dumps({k: round(v, 4) for k, v in test_acc.items()}))
    barrier(ctx)  # when any rank returns, rank 0's files are complete
    return TrainResult(out, best, last, best_epoch, test_acc, history, labels.relabeled, labels.labels.clone(),
                       model.eval(), ctx.rank, ctx.world_size, dynamics)
