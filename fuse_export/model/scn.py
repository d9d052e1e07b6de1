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


def local_low_mask(global_alpha: torch.Tensor, beta: float, offset: int, count: int) -> torch.Tensor:
    """Which of the `count` rows at `offset` of a global batch fall in its low-importance group."""
    _, low = split_by_importance(global_alpha.detach(), beta)
    mask = torch.zeros(global_alpha.reshape(-1).shape[0], dtype=torch.bool, device=global_alpha.device)
    mask[low] = True
    return mask[offset:offset + count]


@torch.no_grad()
def relabel(
    weighted_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor,
    margin: float = 0.2,
    beta: float = 0.7,
    scope: str = "low",
    low_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SCN relabeling: where P_max - P_given > margin, the new label is the argmax.

    `scope="low"` restricts it to the low-importance group, as the paper describes; `scope="all"` applies it
    to every sample, as the authors' released code does. `low_mask` (bool [N]) gives the low group when it was
    ranked over more than these samples (the global batch of a distributed step); by default it is ranked
    within them. Returns (new targets, bool mask of changed samples).
    """
    probs = torch.softmax(weighted_logits.float(), dim=1)
    p_max, pred = probs.max(dim=1)
    p_given = probs.gather(1, targets.view(-1, 1)).squeeze(1)
    candidates = (p_max - p_given) > margin
    if scope == "low":
        if low_mask is None:
            _, low = split_by_importance(alpha, beta)
            low_mask = torch.zeros_like(candidates)
            low_mask[low] = True
        candidates &= low_mask.to(candidates.device)
    elif scope != "all":
        raise ValueError(f"relabel scope must be 'low' or 'all', not {scope!r}")
    changed = candidates & (pred != targets)
    return torch.where(changed, pred, targets), changed
