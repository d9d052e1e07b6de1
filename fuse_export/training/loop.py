"""Stage 1 (joint training of the trunk and both heads, with SCN relabeling) and evaluation helpers.

The same code runs in one process or in many under DistributedDataParallel: per-step values stay on the
device (no host sync per step), and at the end of the epoch the metric sums are all-reduced and the relabel
decisions all-gathered, so every rank leaves the epoch with the same metrics and the same labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import DataLoader

from fuse_export.model.fused import FusedFER, HeadOutputs
from fuse_export.model.scn import local_low_mask, rank_regularization, relabel
from fuse_export.training.build import stage_one
from fuse_export.training.distributed import DistContext, all_gather_cat, all_reduce, gather_keeping_grad
from fuse_export.training.dynamics import EpochMargins
from fuse_export.training.recipe import SCNSection, TrainSection
from fuse_export.training.speed import Precision, batch_to


@dataclass
class LabelState:
    """The training labels as they stand: hard labels, optional soft targets, and what relabeling changed."""

    labels: torch.Tensor  # int64 [N]
    original: torch.Tensor  # int64 [N], as loaded
    soft: torch.Tensor | None = None  # float32 [N, C]

    @property
    def relabeled(self) -> int:
        return int((self.labels != self.original).sum())

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        return self.labels[idx] if self.soft is None else self.soft[idx]

    def assign(self, rows: torch.Tensor, new: torch.Tensor) -> int:
        """Store relabeled samples (rows of the training split): they persist for the rest of training."""
        if rows.numel():
            self.labels[rows] = new
            if self.soft is not None:
                self.soft[rows] = F.one_hot(new, self.soft.shape[1]).float()
        return int(rows.numel())

    def apply(self, idx: torch.Tensor, new: torch.Tensor, changed: torch.Tensor) -> int:
        """Store the changed entries of one batch's relabel result."""
        return self.assign(idx[changed], new[changed])


@dataclass
class EpochStats:
    loss: float
    loss_dcnn: float
    loss_scn: float
    loss_rank: float
    train_acc_dcnn: float
    train_acc_scn: float
    alpha_mean: float
    relabeled_epoch: int
    seconds: float
    images_per_s: float


_SUMS = ("loss", "dcnn", "scn", "rank", "acc_d", "acc_s", "alpha")


def train_one_epoch(net: Callable[[torch.Tensor], HeadOutputs], model: FusedFER, loader: DataLoader,
                    labels: LabelState, optimizer: torch.optim.Optimizer, precision: Precision, scn: SCNSection,
                    train: TrainSection, epoch: int, ctx: DistContext, progress: Progress | None = None,
                    margins: EpochMargins | None = None) -> EpochStats:
    """One pass: CE on the DCNN head + (CE on SCN's alpha-weighted logits + rank regularization).

    `net` is the stage-1 network (trunk + heads, maybe DDP-wrapped and compiled); `model` the FusedFER it
    shares parameters with. Rank regularization and the low-importance group rank the alphas of the whole
    global batch (gathered from every rank; each rank's own alphas carry its gradient), so one process and N
    processes with the same global batch choose the same groups. From `scn.relabel_epoch` on, SCN's rule
    relabels samples after the optimizer step. New labels are used from the next time a sample is seen (the
    authors: this iteration still uses the old label); as the sampler shows each sample once per epoch, the
    decisions are gathered from all ranks and stored at the end of the epoch. During the first
    `train.freeze_backbone_epochs` epochs only the heads train (trunk frozen, its BatchNorm in eval mode).
    With `margins`, each sample's margin of its given label (as loaded) is added up for the label audit's AUM.
    """
    device = ctx.device
    model.train()
    # The stacker is fitted in stage 2 on held-out data; keep it out of stage 1 entirely.
    model.stacker.eval()
    frozen = epoch <= train.freeze_backbone_epochs
    _set_trunk_frozen(net, model, frozen)
    sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=device)
    decisions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    seen, shown = 0, 0.0
    relabel_now = scn.relabel_epoch > 0 and epoch >= scn.relabel_epoch
    task = progress.add_task(f"epoch {epoch}", total=len(loader), info="") if progress else None
    start = time.perf_counter()
    for x, idx in loader:
        x = batch_to(x, device, train.channels_last)
        targets = labels.targets(idx).to(device, non_blocking=True)
        with precision.autocast():
            heads: HeadOutputs = net(x)
            loss_dcnn = F.cross_entropy(heads.dcnn_logits, targets)
            loss_scn = F.cross_entropy(heads.scn_logits, targets)
            global_alpha, offset = gather_keeping_grad(heads.alpha.float(), ctx)
            loss_rank = rank_regularization(global_alpha, scn.beta, scn.margin1)
            loss = train.dcnn_weight * loss_dcnn + train.scn_weight * (loss_scn + scn.rank_weight * loss_rank)
            # DDP averages gradients over ranks; each rank's rank-loss gradient is only its own alphas' share
            # of the global loss's, so scaling by the world size makes the average the whole gradient.
            extra_rank = (ctx.world_size - 1) * train.scn_weight * scn.rank_weight * loss_rank
        optimizer.zero_grad(set_to_none=True)
        precision.backward_step(loss + extra_rank if ctx.distributed else loss, optimizer)

        with torch.no_grad():
            hard = labels.labels[idx].to(device, non_blocking=True)
            n = x.shape[0]
            seen += n
            sums += torch.stack([loss.float() * n, loss_dcnn.float() * n, loss_scn.float() * n,
                                 loss_rank.float() * n, (heads.dcnn_logits.argmax(1) == hard).sum().float(),
                                 (heads.scn_logits.argmax(1) == hard).sum().float(),
                                 heads.alpha.float().sum()]).double()
            if margins is not None:
                margins.add(idx, labels.original[idx], heads.dcnn_logits, heads.scn_logits)
            if relabel_now:
                low = local_low_mask(global_alpha, scn.beta, offset, n) if scn.relabel_scope == "low" else None
                new, changed = relabel(heads.scn_logits.float(), hard, heads.alpha.float(), scn.margin2,
                                       scn.beta, scn.relabel_scope, low)
                decisions.append((idx, new, changed))
        if task is not None:
            now = time.perf_counter()
            info = None
            if now - shown > 0.5:  # reading the loss syncs the device: do it twice a second, not every step
                shown = now
                rate = seen * ctx.world_size / max(now - start, 1e-9)
                info = f"loss {float(sums[0]) / seen:.3f}  {rate:.0f} img/s"
            progress.update(task, advance=1, **({"info": info} if info else {}))  # type: ignore[union-attr]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    totals = all_reduce(torch.cat([sums.cpu(), torch.tensor([float(seen)], dtype=torch.float64)]), ctx)
    seconds = float(all_reduce(torch.tensor([seconds]), ctx, op="max"))
    changed_total = labels.assign(*gather_decisions(decisions, ctx))
    m = dict(zip(_SUMS, (totals[:-1] / max(float(totals[-1]), 1.0)).tolist()))
    if task is not None:  # the final figures, over every rank
        progress.update(task, info=f"loss {m['loss']:.3f}  {float(totals[-1]) / max(seconds, 1e-9):.0f} img/s")  # type: ignore[union-attr]
    return EpochStats(
        loss=m["loss"], loss_dcnn=m["dcnn"], loss_scn=m["scn"], loss_rank=m["rank"], train_acc_dcnn=m["acc_d"],
        train_acc_scn=m["acc_s"], alpha_mean=m["alpha"], relabeled_epoch=changed_total, seconds=seconds,
        images_per_s=float(totals[-1]) / max(seconds, 1e-9),
    )


def _set_trunk_frozen(net: Callable[[torch.Tensor], HeadOutputs], model: FusedFER, frozen: bool) -> None:
    """Heads-only stage: the trunk runs without autograd and its BatchNorm keeps its (pretrained) statistics."""
    if isinstance(net, torch.nn.Module):
        stage_one(net).frozen_trunk = frozen
    elif frozen:
        raise TypeError("a frozen trunk needs the stage-1 network from fuse_export.training.build.training_network")
    if frozen:
        for trunk in filter(None, (model.backbone, model.scn_backbone)):
            trunk.eval()


def gather_decisions(decisions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, new labels) changed by any rank this epoch, in rank order, identical on every rank."""
    if decisions:
        idx = torch.cat([d[0] for d in decisions]).long()
        new = torch.cat([d[1] for d in decisions]).cpu()
        changed = torch.cat([d[2] for d in decisions]).cpu()
        rows, values = idx[changed], new[changed]
    else:
        rows = values = torch.zeros(0, dtype=torch.int64)
    both = all_gather_cat(torch.stack([rows, values], dim=1), ctx)
    return both[:, 0].contiguous(), both[:, 1].contiguous()


@torch.no_grad()
def predict_heads(model: FusedFER, loader: DataLoader, device: torch.device,
                  channels_last: bool = False) -> HeadOutputs:
    """Both heads' outputs over a loader, concatenated on the CPU (eval mode)."""
    model.eval()
    outs = [model.forward_heads(batch_to(x, device, channels_last)) for x, _ in loader]
    if not outs:
        c = model.config.num_classes
        return HeadOutputs(torch.zeros(0, c), torch.zeros(0, c), torch.zeros(0, 1))
    return HeadOutputs(*(torch.cat([getattr(o, f).float().cpu() for o in outs]) for f in HeadOutputs._fields))


def gather_heads(heads: HeadOutputs, ctx: DistContext) -> HeadOutputs:
    """Every rank's shard of predictions, concatenated in rank order (the whole split, on every rank)."""
    return HeadOutputs(*(all_gather_cat(t, ctx) for t in heads))


@torch.no_grad()
def head_accuracies(model: FusedFER, heads: HeadOutputs, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy of the DCNN head, the SCN head and the fused (stacked) output."""
    if labels.numel() == 0:
        return {"dcnn": float("nan"), "scn": float("nan"), "fused": float("nan")}
    stacker_device = next(model.stacker.parameters()).device
    fused = model.stacker.to("cpu")(heads.dcnn_logits, heads.scn_logits, heads.alpha)
    model.stacker.to(stacker_device)
    return {
        "dcnn": float((heads.dcnn_logits.argmax(1) == labels).float().mean()),
        "scn": float((heads.scn_logits.argmax(1) == labels).float().mean()),
        "fused": float((fused.argmax(1) == labels).float().mean()),
    }
