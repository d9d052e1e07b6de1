"""What a training run is built from: the data splits, the model, the optimizer and scheduler, and the
stage-1 network that DistributedDataParallel wraps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fuse_export.data.base import FerDataset, Split
from fuse_export.data.registry import load_dataset
from fuse_export.errors import CheckpointError, DataError, RecipeError
from fuse_export.model.fused import FusedFER, HeadOutputs, ModelConfig
from fuse_export.model.weights import load_backbone_weights
from fuse_export.model.weights_fetch import resolve_weights
from fuse_export.training.distributed import DistContext, broadcast_object
from fuse_export.training.recipe import Recipe
from fuse_export.training.speed import maybe_compile, to_memory_format


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


def build_model(recipe: Recipe, num_classes: int, log: Any = print) -> FusedFER:
    m = recipe.model
    model = FusedFER(ModelConfig(num_classes, m.dcnn_hidden, m.dcnn_dropout, m.scn_dropout, m.shared_backbone,
                                 recipe.stacking.kind))
    if m.pretrained:
        for trunk in filter(None, (model.backbone, model.scn_backbone)):
            report = load_backbone_weights(trunk, m.pretrained, m.allow_partial_weights)
        log(f"pretrained {m.pretrained}: {report.summary()}")
    return model


def fetch_pretrained_on_main(recipe: Recipe, ctx: DistContext) -> None:
    """Rank 0 resolves (downloads, if needed) the pretrained file before any rank reads it; every rank raises
    rank 0's error rather than waiting for it."""
    if not recipe.model.pretrained:
        return
    error = None
    if ctx.is_main:
        try:
            resolve_weights(recipe.model.pretrained)
        except CheckpointError as exc:
            error = str(exc)
    error = broadcast_object(error, ctx)
    if error is not None:
        raise CheckpointError(error)


def is_trunk_parameter(name: str) -> bool:
    return name.startswith(("backbone.", "scn_backbone."))


def make_optimizer(model: FusedFER, recipe: Recipe) -> tuple[torch.optim.Optimizer, Any]:
    """Two parameter groups, heads first (param_groups[0]['lr'] is the recipe's lr), then the trunk at
    lr * train.backbone_lr_mult (Akhand et al.'s smaller rate for the pretrained blocks). The stacker is not
    trained here (stage 2 fits it)."""
    t = recipe.train
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("stacker.")]
    groups = [{"params": [p for n, p in named if not is_trunk_parameter(n)], "lr": t.lr},
              {"params": [p for n, p in named if is_trunk_parameter(n)], "lr": t.lr * t.backbone_lr_mult}]
    if t.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
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


class StageOneNet(nn.Module):
    """What stage 1 trains: the trunk(s) and both heads of a FusedFER (shared parameters), not the stacker.

    DDP wraps this rather than FusedFER: the stacker gets no gradient in stage 1, and DDP expects every
    parameter it manages to get one at every step.
    """

    def __init__(self, model: FusedFER) -> None:
        super().__init__()
        self.backbone, self.scn_backbone = model.backbone, model.scn_backbone
        self.dcnn, self.scn = model.dcnn, model.scn
        # Staged fine-tuning: while True the trunk runs without autograd (its parameters get no gradient, so
        # the optimizer leaves them and their moments untouched) and the loop keeps it in eval mode.
        self.frozen_trunk = False

    def forward(self, x: torch.Tensor) -> HeadOutputs:
        # FusedFER's own feature and head passes over these same submodules: one definition of the network.
        if self.frozen_trunk:
            with torch.no_grad():
                feats = FusedFER.features(self, x)  # type: ignore[arg-type]
        else:
            feats = FusedFER.features(self, x)  # type: ignore[arg-type]
        return FusedFER.heads(self, *feats)  # type: ignore[arg-type]


def stage_one(net: nn.Module) -> StageOneNet:
    """The StageOneNet inside a (maybe compiled, maybe DDP-wrapped) training network."""
    inner = getattr(net, "_orig_mod", net)
    inner = getattr(inner, "module", inner)
    if not isinstance(inner, StageOneNet):
        raise TypeError(f"not a stage-1 network: {type(net).__name__}")
    return inner


def training_network(model: FusedFER, recipe: Recipe, ctx: DistContext) -> nn.Module:
    """The module the loop calls: channels_last if asked, DDP across ranks, then torch.compile if asked."""
    to_memory_format(model, recipe.train.channels_last)
    net: nn.Module = StageOneNet(model)
    if ctx.distributed:
        if recipe.train.sync_bn:
            if ctx.device.type != "cuda":
                raise RecipeError(f"{recipe.source or recipe.name}: train.sync_bn needs CUDA devices (PyTorch's "
                                  "SyncBatchNorm does not run on the CPU); set it to false")
            # Replaces the BatchNorm modules inside the trunk(s) the FusedFER shares, so the model (and its
            # checkpoints, whose keys are unchanged) uses them too; in eval mode they are plain BatchNorm.
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        # DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same weights.
        # A frozen stage leaves the trunk without gradients, which DDP must be told to expect.
        net = DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                      find_unused_parameters=recipe.train.freeze_backbone_epochs > 0)
    return maybe_compile(net, recipe.train.compile)
