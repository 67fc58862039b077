"""Filter importance criteria and the allocation of removals over channel groups."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from autoprune.surgery import ChannelGroup


def l1_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Per channel: L1 norm of the filter weights, summed over the group's coupled layers
    (Roy et al.'s criterion; a residual-coupled channel counts every filter feeding it)."""
    total = torch.zeros(group.width)
    for layer in group.modules_of_type(model, (nn.Conv2d, nn.Linear)):
        w = layer.weight.detach()  # type: ignore[operator]
        total += w.abs().reshape(w.shape[0], -1).sum(1).float().cpu()
    return total


def random_importance(group: ChannelGroup) -> torch.Tensor:
    """Random scores (drawn from torch's global RNG, which checkpoints restore)."""
    return torch.rand(group.width)


def uniform_plan(
    scores: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    dense_widths: Mapping[str, int],
    fraction: float,
) -> dict[str, list[int]]:
    """Remove the same fraction of every group (of its dense width), least important first."""
    plan = {}
    for key, score in scores.items():
        keep = max(1, round(dense_widths.get(key, widths[key]) * (1.0 - fraction)))
        n_remove = widths[key] - keep
        if n_remove > 0:
            plan[key] = torch.argsort(score)[:n_remove].tolist()
    return plan


def global_plan(
    scores: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    dense_widths: Mapping[str, int],
    fraction: float,
    floor: float,
) -> dict[str, list[int]]:
    """Rank all channels together (scores normalised per group by their mean) and keep the
    best ``1 - fraction`` of the dense total, never a group below ``floor`` of its width."""
    total_dense = sum(dense_widths.get(k, widths[k]) for k in scores)
    n_keep = max(len(scores), round(total_dense * (1.0 - fraction)))
    candidates = []
    keep: dict[str, int] = {}
    for key, score in scores.items():
        minimum = max(1, math.ceil(floor * dense_widths.get(key, widths[key])))
        order = torch.argsort(score, descending=True)
        keep[key] = min(minimum, widths[key])
        normalised = score / score.mean().clamp_min(1e-12)
        candidates += [(normalised[i].item(), key) for i in order[keep[key]:].tolist()]
    budget = n_keep - sum(keep.values())
    for _, key in sorted(candidates, reverse=True)[: max(budget, 0)]:
        keep[key] += 1
    plan = {}
    for key, score in scores.items():
        n_remove = widths[key] - keep[key]
        if n_remove > 0:
            plan[key] = torch.argsort(score)[:n_remove].tolist()
    return plan
