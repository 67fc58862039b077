"""Residual blocks whose shortcut is the identity, and where their residual branch ends.

Such a block computes ``x + branch(x)`` (possibly followed by an activation), so removing
the branch leaves the identity: :meth:`TrainContext.remove_module` replaces the block.
Found generically: autoprune's blocks say ``has_identity_shortcut``; torchvision's
``BasicBlock``/``Bottleneck`` have ``downsample is None``; MobileNetV2-style inverted
residuals set ``use_res_connect`` (torchvision) or ``use_residual`` (autoprune).
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.surgery.trace import trace_calls

_TAIL_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def has_identity_shortcut(module: nn.Module) -> bool:
    if getattr(module, "autoprune_removed", False):
        return False
    flag = getattr(module, "has_identity_shortcut", None)
    if flag is not None:
        return flag is True
    kind = type(module).__name__
    if kind in ("BasicBlock", "Bottleneck") and hasattr(module, "downsample"):
        return module.downsample is None
    if kind == "InvertedResidual":
        return bool(getattr(module, "use_res_connect", getattr(module, "use_residual", False)))
    return False


def identity_blocks(model: nn.Module) -> list[str]:
    """Names of the (outermost) residual blocks with an identity shortcut."""
    found: list[str] = []
    for name, module in model.named_modules():
        if name and has_identity_shortcut(module) and not any(
            name.startswith(b + ".") for b in found
        ):
            found.append(name)
    return found


def branch_tails(model: nn.Module, x: torch.Tensor, blocks: list[str]) -> dict[str, str]:
    """Block name -> the last conv/linear/norm run inside it: the end of its branch, whose
    output a branch gate multiplies before the addition."""
    calls = trace_calls(model, x[:1], lambda _n, m: isinstance(m, _TAIL_TYPES))
    tails: dict[str, str] = {}
    for name in (c.name for c in calls):
        for block in blocks:
            if name.startswith(block + "."):
                tails[block] = name
    return tails
