"""SCN's two training-time rules: rank regularization of the importance weights, and relabeling."""

from __future__ import annotations

import torch


def split_by_importance(alpha: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the high-importance group (top `int(B * beta)` alphas) and of the rest."""
    a = alpha.reshape(-1)
    b = a.shape[0]
    tops = int(b * beta)
    order = torch.argsort(a, descending=True)
    return order[:tops], order[tops:]


def rank_regularization(alpha: torch.Tensor, beta: float = 0.7, margin: float = 0.07) -> torch.Tensor:
    """max(0, margin - (mean alpha of the high group - mean alpha of the low group)).

    A batch too small to form both groups contributes zero (nothing to rank).
    """
    high, low = split_by_importance(alpha, beta)
    if high.numel() == 0 or low.numel() == 0:
        return alpha.sum() * 0.0
    a = alpha.reshape(-1)
    return torch.clamp(margin - (a[high].mean() - a[low].mean()), min=0.0)


@torch.no_grad()
def relabel(
    weighted_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor,
    margin: float = 0.2,
    beta: float = 0.7,
    scope: str = "low",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SCN relabeling: where P_max - P_given > margin, the new label is the argmax.

    `scope="low"` restricts it to the low-importance group, as the paper describes; `scope="all"` applies it
    to every sample, as the authors' released code does. Returns (new targets, bool mask of changed samples).
    """
    probs = torch.softmax(weighted_logits.float(), dim=1)
    p_max, pred = probs.max(dim=1)
    p_given = probs.gather(1, targets.view(-1, 1)).squeeze(1)
    candidates = (p_max - p_given) > margin
    if scope == "low":
        _, low = split_by_importance(alpha, beta)
        in_low = torch.zeros_like(candidates)
        in_low[low] = True
        candidates &= in_low
    elif scope != "all":
        raise ValueError(f"relabel scope must be 'low' or 'all', not {scope!r}")
    changed = candidates & (pred != targets)
    return torch.where(changed, pred, targets), changed
