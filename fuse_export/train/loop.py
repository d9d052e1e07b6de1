"""Stage 1 (joint training of the trunk and both heads, with SCN relabeling) and evaluation helpers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import DataLoader

from fuse_export.model.fused import FusedFER, HeadOutputs
from fuse_export.model.scn import rank_regularization, relabel
from fuse_export.train.recipe import SCNSection, TrainSection


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

    def apply(self, idx: torch.Tensor, new: torch.Tensor, changed: torch.Tensor) -> int:
        """Store relabeled samples: they persist for the rest of training."""
        rows = idx[changed]
        if rows.numel():
            self.labels[rows] = new[changed]
            if self.soft is not None:
                self.soft[rows] = F.one_hot(new[changed], self.soft.shape[1]).float()
        return int(rows.numel())


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


def train_one_epoch(model: FusedFER, loader: DataLoader, labels: LabelState, optimizer: torch.optim.Optimizer,
                    scn: SCNSection, train: TrainSection, epoch: int, device: torch.device,
                    progress: Progress | None = None) -> EpochStats:
    """One pass: CE on the DCNN head + (CE on SCN's alpha-weighted logits + rank regularization).

    From `scn.relabel_epoch` on, SCN's rule relabels samples after the optimizer step; the new labels are
    used from the next time the sample is seen (the authors: this iteration still uses the old label), and
    they feed both heads' targets.
    """
    model.train()
    # The stacker is fitted in stage 2 on held-out data; keep it out of stage 1 entirely.
    model.stacker.eval()
    sums = {"loss": 0.0, "dcnn": 0.0, "scn": 0.0, "rank": 0.0, "acc_d": 0.0, "acc_s": 0.0, "alpha": 0.0}
    seen, changed_total = 0, 0
    relabel_now = scn.relabel_epoch > 0 and epoch >= scn.relabel_epoch
    task = progress.add_task(f"epoch {epoch}", total=len(loader), info="") if progress else None
    start = time.perf_counter()
    for x, idx in loader:
        x = x.to(device, non_blocking=True)
        targets = labels.targets(idx).to(device)
        heads: HeadOutputs = model.forward_heads(x)
        loss_dcnn = F.cross_entropy(heads.dcnn_logits, targets)
        loss_scn = F.cross_entropy(heads.scn_logits, targets)
        loss_rank = rank_regularization(heads.alpha, scn.beta, scn.margin1)
        loss = train.dcnn_weight * loss_dcnn + train.scn_weight * (loss_scn + scn.rank_weight * loss_rank)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        hard = labels.labels[idx].to(device)
        n = x.shape[0]
        seen += n
        sums["loss"] += float(loss.detach()) * n
        sums["dcnn"] += float(loss_dcnn.detach()) * n
        sums["scn"] += float(loss_scn.detach()) * n
        sums["rank"] += float(loss_rank.detach()) * n
        sums["acc_d"] += float((heads.dcnn_logits.argmax(1) == hard).sum())
        sums["acc_s"] += float((heads.scn_logits.argmax(1) == hard).sum())
        sums["alpha"] += float(heads.alpha.detach().sum())
        if relabel_now:
            new, changed = relabel(heads.scn_logits.detach(), hard, heads.alpha.detach(), scn.margin2, scn.beta,
                                   scn.relabel_scope)
            changed_total += labels.apply(idx, new.cpu(), changed.cpu())
        if progress is not None and task is not None:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=1, info=f"loss {sums['loss'] / seen:.3f}  {rate:.0f} img/s")
    seconds = time.perf_counter() - start
    seen = max(seen, 1)
    return EpochStats(
        loss=sums["loss"] / seen, loss_dcnn=sums["dcnn"] / seen, loss_scn=sums["scn"] / seen,
        loss_rank=sums["rank"] / seen, train_acc_dcnn=sums["acc_d"] / seen, train_acc_scn=sums["acc_s"] / seen,
        alpha_mean=sums["alpha"] / seen, relabeled_epoch=changed_total, seconds=seconds,
        images_per_s=seen / max(seconds, 1e-9),
    )


@torch.no_grad()
def predict_heads(model: FusedFER, loader: DataLoader, device: torch.device) -> HeadOutputs:
    """Both heads' outputs over a loader, concatenated on the CPU (eval mode)."""
    model.eval()
    outs = [model.forward_heads(x.to(device)) for x, _ in loader]
    if not outs:
        return HeadOutputs(torch.zeros(0), torch.zeros(0), torch.zeros(0))
    return HeadOutputs(*(torch.cat([getattr(o, f).float().cpu() for o in outs]) for f in HeadOutputs._fields))


@torch.no_grad()
def head_accuracies(model: FusedFER, heads: HeadOutputs, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy of the DCNN head, the SCN head and the fused (stacked) output."""
    if labels.numel() == 0:
        return {"dcnn": float("nan"), "scn": float("nan"), "fused": float("nan")}
    stacker_device = next(model.stacker.parameters()).device
    fused = model.stacker.to("cpu")(torch.softmax(heads.dcnn_logits, 1), torch.softmax(heads.scn_logits, 1),
                                    heads.alpha)
    model.stacker.to(stacker_device)
    return {
        "dcnn": float((heads.dcnn_logits.argmax(1) == labels).float().mean()),
        "scn": float((heads.scn_logits.argmax(1) == labels).float().mean()),
        "fused": float((fused.argmax(1) == labels).float().mean()),
    }
