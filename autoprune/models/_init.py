"""The one weight initialisation of autoprune's own models."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Kaiming-normal convolutions (fan_out, as in torchvision; biases 0), batch norms at
    weight 1 and bias 0, linears N(0, ``linear_std``) with bias 0 (``None`` keeps
    PyTorch's default for linears, as the CIFAR ResNets of He et al. do)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


__all__ = ["init_weights"]
