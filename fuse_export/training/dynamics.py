"""Training dynamics for the label audit: every training sample's margin of its given label, epoch by epoch.

The margin of a sample is the logit of its given label minus the largest other logit. Averaged over the epochs
before SCN starts relabeling (the area under the margin, AUM: Pleiss et al. 2020), it is low or negative for
a mislabeled sample, which the network learns late and against the pull of its look-alikes, and high for a
clean one, learnt early. Unlike the final model's probabilities it needs no second training run, and it is not
circular: it is read before the model has fitted (or relabeled) the noisy labels.

Recorded per head: the DCNN head's logits and SCN's alpha-weighted logits (low alpha shrinks the margin, so SCN's
importance weight counts too). Stage-1 rows are measured in the training forward pass (no extra work); the
holdout rows, which stage 1 never trains on, in the epoch-end pass over them that fits the stacker, so their
margins are out of sample. `fuse-export audit-labels` reads the record from the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fuse_export.errors import CheckpointError
from fuse_export.training.distributed import DistContext, all_reduce

HEADS = ("dcnn", "scn")
FORMAT_VERSION = 1


def label_margins(logits: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """logit[given] - max over the other classes, per row (float32 [N])."""
    logits = logits.detach().float()
    given = given.view(-1, 1).to(logits.device)
    own = logits.gather(1, given).squeeze(1)
    other = logits.scatter(1, given, float("-inf")).amax(1)
    return own - other


class EpochMargins:
    """One epoch's margin sums over the stage-1 rows of this rank, on the training device (no host sync)."""

    def __init__(self, rows: int, device: torch.device) -> None:
        self.sums = torch.zeros(rows, len(HEADS), dtype=torch.float64, device=device)
        self.counts = torch.zeros(rows, dtype=torch.float64, device=device)

    def add(self, idx: torch.Tensor, given: torch.Tensor, dcnn_logits: torch.Tensor, scn_logits: torch.Tensor) -> None:
        idx = idx.to(self.sums.device)
        m = torch.stack([label_margins(dcnn_logits, given), label_margins(scn_logits, given)], 1)
        self.sums.index_add_(0, idx, m.double())
        self.counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def reduced(self, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums [rows, 2], counts [rows]) over every rank, on the CPU (each rank saw its own samples)."""
        both = all_reduce(torch.cat([self.sums, self.counts[:, None]], 1), ctx)
        return both[:, :-1], both[:, -1]


@dataclass
class TrainingDynamics:
    """Margins of the train split (as loaded) accumulated over the recorded epochs; saved in checkpoints."""

    given: torch.Tensor  # int64 [N]: the labels the margins are of (the train split as loaded, before relabeling)
    trained: torch.Tensor  # bool [N]: True for stage-1 rows, False for the holdout (out-of-sample margins)
    margin_sum: torch.Tensor  # float64 [N, len(HEADS)]
    count: torch.Tensor  # float64 [N]
    epochs: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, given: np.ndarray, train_idx: np.ndarray) -> TrainingDynamics:
        n = int(len(given))
        trained = torch.zeros(n, dtype=torch.bool)
        trained[torch.from_numpy(np.asarray(train_idx, np.int64))] = True
        return cls(torch.from_numpy(np.asarray(given, np.int64).copy()), trained,
                   torch.zeros(n, len(HEADS), dtype=torch.float64), torch.zeros(n, dtype=torch.float64))

    @staticmethod
    def records(epoch: int, relabel_epoch: int) -> bool:
        """AUM's window: the epochs before relabeling starts (all epochs when it never does)."""
        return relabel_epoch <= 0 or epoch < relabel_epoch

    def add_epoch(self, epoch: int, train_idx: np.ndarray, stage_one: tuple[torch.Tensor, torch.Tensor],
                  hold_idx: np.ndarray, hold_dcnn: torch.Tensor, hold_scn: torch.Tensor) -> None:
        """Fold in one epoch: stage-1 sums from `EpochMargins.reduced`, and the holdout rows' eval-pass logits."""
        sums, counts = stage_one
        rows = torch.from_numpy(np.asarray(train_idx, np.int64))
        self.margin_sum.index_add_(0, rows, sums.double())
        self.count.index_add_(0, rows, counts.double())
        if len(hold_idx):
            hold = torch.from_numpy(np.asarray(hold_idx, np.int64))
            given = self.given[hold]
            m = torch.stack([label_margins(hold_dcnn, given), label_margins(hold_scn, given)], 1).cpu()
            self.margin_sum.index_add_(0, hold, m.double())
            self.count.index_add_(0, hold, torch.ones(len(hold), dtype=torch.float64))
        self.epochs.append(int(epoch))

    def aum(self) -> np.ndarray:
        """Mean margin per row and head, float64 [N, len(HEADS)] (NaN where no epoch was recorded)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.margin_sum / self.count[:, None]).numpy()

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers: checkpoints stay loadable with weights_only=True."""
        return {"format_version": FORMAT_VERSION, "heads": list(HEADS), "given": self.given.clone(),
                "trained": self.trained.clone(), "margin_sum": self.margin_sum.clone(), "count": self.count.clone(),
                "epochs": list(self.epochs)}

    @classmethod
    def from_state(cls, state: Any, path: str | os.PathLike) -> TrainingDynamics:
        """Rebuild from a checkpoint's `training_dynamics`, checking its shape (a CheckpointError names the file)."""
        try:
            if int(state["format_version"]) > FORMAT_VERSION or list(state["heads"]) != list(HEADS):
                raise ValueError("written by a newer fuse-export")
            out = cls(state["given"].long(), state["trained"].bool(), state["margin_sum"].double(),
                      state["count"].double(), [int(e) for e in state["epochs"]])
            n = out.given.shape[0]
            if out.trained.shape != (n,) or out.margin_sum.shape != (n, len(HEADS)) or out.count.shape != (n,):
                raise ValueError("inconsistent shapes")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path}: field 'training_dynamics' is malformed ({exc}); audit with "
                                  "--method crossfit, or retrain with this fuse-export") from None
        return out
