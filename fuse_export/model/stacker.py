"""The stacking meta-learner: fused logits from the two heads' outputs and SCN's importance weight alpha.

A multinomial logistic regression (one Linear layer) over features of the frozen base model's held-out
predictions, fitted by full-batch L-BFGS with L2. Two feature sets (`kind`):

* "linear" (the default): [p_dcnn, p_scn, alpha]. Linear in alpha, alpha can only add a per-class offset;
  it cannot shift trust between the heads.
* "interaction": [log p_dcnn, log p_scn, alpha * log p_dcnn, alpha * log p_scn, alpha]. The fused logit of
  class c is (A + alpha B) log p_dcnn + (C + alpha D) log p_scn + ..., so alpha scales how far each head is
  trusted, per image. Paired against "linear" on the noisy-label benchmark (benchmarks/compare_stacker.py,
  3 seeds, 0% and 30% noise) it was worse on every seed at 0% (-6.0 points on validation) and on 2 of 3 at
  30%: with ~70 held-out images its 4C+1 inputs over-fit where 2C+1 do not. It is kept as an option for
  large held-out splits, not as the default.

Log-probabilities are log_softmax of the heads' logits (exact and finite, unlike log of a softmax).
"""

from __future__ import annotations

import torch
from torch import nn

STACKER_KINDS = ("linear", "interaction")


def feature_dim(kind: str, num_classes: int) -> int:
    return {"interaction": 4 * num_classes + 1, "linear": 2 * num_classes + 1}[kind]


class Stacker(nn.Module):
    def __init__(self, num_classes: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in STACKER_KINDS:
            raise ValueError(f"stacker kind {kind!r}: choose from {', '.join(STACKER_KINDS)}")
        self.kind = kind
        self.linear = nn.Linear(feature_dim(kind, num_classes), num_classes)
        # Until fitted, combine the two heads evenly (a sane default, not a zero net): the mean of their
        # log-probabilities ("interaction"), or of their probabilities, sharpened ("linear").
        gain = 0.5 if kind == "interaction" else 4.0
        with torch.no_grad():
            self.linear.weight.zero_()
            eye = torch.eye(num_classes)
            self.linear.weight[:, :num_classes] = eye * gain
            self.linear.weight[:, num_classes:2 * num_classes] = eye * gain
            self.linear.bias.zero_()

    def features(self, dcnn_logits: torch.Tensor, scn_logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The meta-learner's input from the heads' logits [N, C] (SCN's alpha-weighted) and alpha [N, 1]."""
        if self.kind == "linear":
            return torch.cat([torch.softmax(dcnn_logits, 1), torch.softmax(scn_logits, 1), alpha], dim=1)
        log_d, log_s = torch.log_softmax(dcnn_logits, 1), torch.log_softmax(scn_logits, 1)
        return torch.cat([log_d, log_s, alpha * log_d, alpha * log_s, alpha], dim=1)

    def forward(self, dcnn_logits: torch.Tensor, scn_logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(dcnn_logits, scn_logits, alpha))


def fit_stacker(
    stacker: Stacker,
    features: torch.Tensor,
    labels: torch.Tensor,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> float:
    """Fit by full-batch L-BFGS on cross-entropy + L2 (deterministic, seconds on CPU). Returns the final loss."""
    features = features.detach().float().cpu()
    labels = labels.detach().long().cpu()
    lin = stacker.linear
    device = lin.weight.device
    lin.cpu().train()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(lin(features), labels) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = opt.step(closure)
    lin.to(device)
    return float(loss.detach())
