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

Every candidate combination the training run chooses between (train/stacking.py) is a weight matrix of this one
layer (`anchor_weights`): the DCNN head alone, the SCN head alone, their even combination, or a fit regularized
towards the even combination. So whichever wins, the exported graph is the same Linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

STACKER_KINDS = ("linear", "interaction")


# The fixed combinations a fitted stacker must beat, each a weight pattern over the heads' blocks of features.
ANCHORS = ("dcnn", "scn", "average")


def feature_dim(kind: str, num_classes: int) -> int:
    return {"interaction": 4 * num_classes + 1, "linear": 2 * num_classes + 1}[kind]


def default_gain(kind: str) -> float:
    """The unfitted even combination's gain: mean log-probabilities, or probabilities sharpened x4."""
    return 0.5 if kind == "interaction" else 4.0


def anchor_weights(kind: str, num_classes: int, anchor: str, gain: float) -> torch.Tensor:
    """The [C, F] weight of a fixed combination: `gain` times the identity on the DCNN block ("dcnn"), the SCN
    block ("scn") or both ("average"); zero on alpha (and on the alpha-scaled blocks of "interaction").

    Its argmax is the head's (or the heads' mean's) argmax for any gain > 0; the gain only sets the confidence.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor {anchor!r}: choose from {', '.join(ANCHORS)}")
    c = num_classes
    w = torch.zeros(c, feature_dim(kind, c))
    eye = torch.eye(c) * float(gain)
    if anchor in ("dcnn", "average"):
        w[:, :c] = eye
    if anchor in ("scn", "average"):
        w[:, c:2 * c] = eye
    return w


class Stacker(nn.Module):
    def __init__(self, num_classes: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in STACKER_KINDS:
            raise ValueError(f"stacker kind {kind!r}: choose from {', '.join(STACKER_KINDS)}")
        self.kind = kind
        self.linear = nn.Linear(feature_dim(kind, num_classes), num_classes)
        # Until fitted, combine the two heads evenly (a sane default, not a zero net): the mean of their
        # log-probabilities ("interaction"), or of their probabilities, sharpened ("linear").
        with torch.no_grad():
            self.linear.weight.copy_(anchor_weights(kind, num_classes, "average", default_gain(kind)))
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
    anchor: torch.Tensor | None = None,
) -> float:
    """Fit by full-batch L-BFGS on cross-entropy + weight_decay * ||W - anchor||^2 (deterministic, milliseconds on
    CPU). Returns the fitted objective (cross-entropy + penalty) at the solution.

    With `anchor` (a [C, F] weight, see `anchor_weights`) the penalty pulls towards that combination of the heads
    instead of towards zero: a strong penalty gives the anchor back (sharpened or softened), a weak one the free
    fit. The bias is not penalized. The fit starts from the anchor.
    """
    features = features.detach().float().cpu()
    labels = labels.detach().long().cpu()
    lin = stacker.linear
    device = lin.weight.device
    lin.cpu().train()
    target = torch.zeros_like(lin.weight) if anchor is None else anchor.detach().float().cpu()
    if anchor is not None:
        with torch.no_grad():
            lin.weight.copy_(target)
            lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss()

    def objective() -> torch.Tensor:
        return loss_fn(lin(features), labels) + weight_decay * (lin.weight - target).pow(2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)  # returns the loss at the START (L-BFGS's first closure call), not the fitted one
    with torch.no_grad():
        fitted = float(objective())
    lin.to(device)
    return fitted
