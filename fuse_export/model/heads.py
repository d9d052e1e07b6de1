"""The two heads on the shared 512-d feature: the transfer-learning DCNN head and the SCN head."""

from __future__ import annotations

import torch
from torch import nn


class DCNNHead(nn.Module):
    """New dense layers after Akhand et al.: [Linear -> ReLU -> Dropout] * len(hidden) -> Linear to C logits."""

    def __init__(self, in_dim: int, num_classes: int, hidden: tuple[int, ...] = (256,), dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)


class SCNHead(nn.Module):
    """Self-Cure Network head (Wang et al. 2020).

    alpha = sigmoid(Linear(512, 1)) is the per-image importance weight; the logits are `alpha * fc(x)`
    (logit-weighted cross-entropy), exactly as the authors' `Res18Feature.forward`.
    """

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        self.alpha = nn.Sequential(nn.Linear(in_dim, 1), nn.Sigmoid())

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (weighted logits [N, C], alpha [N, 1])."""
        feat = self.dropout(feat)
        alpha = self.alpha(feat)
        return alpha * self.fc(feat), alpha
