"""Optimiser construction, learning-rate schedule, and optimiser state saved by name."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from autoprune.config import TrainingConfig


def build_optimizer(
    groups: list[dict[str, Any]], training: TrainingConfig
) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam/AdamW over ``groups`` (torch param-group dicts)."""
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=training.lr, momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
    cls = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=training.lr, weight_decay=training.weight_decay)


def lr_at(epoch: int, training: TrainingConfig) -> float:
    """Learning rate for 0-based ``epoch`` (a pure function, so resizing changes nothing)."""
    progress = epoch / training.epochs
    if training.lr_schedule == "cosine":
        return training.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if training.lr_schedule == "step":
        return training.lr * (0.1 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    return training.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr, keeping a group's own ``lr_scale`` if it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """Optimiser state keyed by parameter name, robust to any order of parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    state = {}
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        groups.append({**hyper, "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            if p in optimizer.state:
                state[names[id(p)]] = dict(optimizer.state[p])
    return {"param_groups": groups, "state": state}


def load_optimizer_state_by_name(
    optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state_by_name` on a model of the same shape."""
    params = dict(model.named_parameters())
    optimizer.param_groups.clear()
    optimizer.state.clear()
    for group in saved["param_groups"]:
        optimizer.param_groups.append({**group, "params": [params[n] for n in group["params"]]})
    for name, st in saved["state"].items():
        optimizer.state[params[name]] = dict(st)
