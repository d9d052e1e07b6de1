"""The stacking meta-learner: fused logits from [DCNN probabilities, SCN probabilities, alpha].

It is a multinomial logistic regression (one Linear layer), fitted on held-out predictions of the frozen
base model, so what it learns is how far to trust each head (and when alpha says an image is uncertain).
"""

from __future__ import annotations

import torch
from torch import nn


class Stacker(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * num_classes + 1, num_classes)
        # Until fitted, behave like averaging the two heads' probabilities (a sane default, not a zero net).
        with torch.no_grad():
            self.linear.weight.zero_()
            eye = torch.eye(num_classes)
            self.linear.weight[:, :num_classes] = eye * 4.0
            self.linear.weight[:, num_classes:2 * num_classes] = eye * 4.0
            self.linear.bias.zero_()

    @staticmethod
    def features(p_dcnn: torch.Tensor, p_scn: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return torch.cat([p_dcnn, p_scn, alpha], dim=1)

    def forward(self, p_dcnn: torch.Tensor, p_scn: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(p_dcnn, p_scn, alpha))


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
