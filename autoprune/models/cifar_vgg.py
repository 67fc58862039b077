"""CIFAR VGGs with batch norm (Simonyan & Zisserman 2015, configs A/B/D/E).

This is the common CIFAR variant (as in network-slimming and most pruning papers): conv-BN-ReLU
features, global average pooling and a single ``nn.Linear(512, num_classes)`` named
``classifier`` instead of the three large ImageNet fully connected layers. For inputs smaller
than 32x32 the max-pools that would shrink the feature map below 1x1 are left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.models._init import init_weights
from autoprune.models._registry import register_model, reject_kwargs

__all__ = ["CFGS", "CifarVGG"]

# "M" is a 2x2 max-pool; integers are 3x3 conv output channels.
# fmt: off
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}
# fmt: on


class CifarVGG(nn.Module):
    """``features`` (Conv-BN-ReLU(-MaxPool) blocks), global average pool, ``classifier``."""

    def __init__(
        self, cfg: list[int | str], num_classes: int, in_channels: int = 3, input_size: int = 32
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for v in cfg:
            if v == "M":
                if size >= 2:  # skip pools that would shrink the map below 1x1
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    size //= 2
                continue
            assert isinstance(v, int)
            conv = nn.Conv2d(channels, v, 3, padding=1, bias=False)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU()]
            channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _make(
    name: str, cfg: str, num_classes: int, in_channels: int, input_size: int, kw: dict[str, Any]
) -> CifarVGG:
    reject_kwargs(name, kw)
    return CifarVGG(CFGS[cfg], num_classes, in_channels, input_size)


@register_model("cifar_vgg11", "cifar_vgg", description="CIFAR VGG-11-BN (config A), GAP head")
def cifar_vgg11(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR VGG-11 with batch norm."""
    return _make("cifar_vgg11", "A", num_classes, in_channels, input_size, kw)


@register_model("cifar_vgg13", "cifar_vgg", description="CIFAR VGG-13-BN (config B), GAP head")
def cifar_vgg13(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR VGG-13 with batch norm."""
    return _make("cifar_vgg13", "B", num_classes, in_channels, input_size, kw)


@register_model("cifar_vgg16", "cifar_vgg", description="CIFAR VGG-16-BN (config D), GAP head")
def cifar_vgg16(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR VGG-16 with batch norm."""
    return _make("cifar_vgg16", "D", num_classes, in_channels, input_size, kw)


@register_model("cifar_vgg19", "cifar_vgg", description="CIFAR VGG-19-BN (config E), GAP head")
def cifar_vgg19(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR VGG-19 with batch norm."""
    return _make("cifar_vgg19", "E", num_classes, in_channels, input_size, kw)
