"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, depth 6n+2.

Shortcuts are identities where the shape is kept and 1x1 conv + BN projections ("option B")
where it changes (first block of stages 2 and 3). The paper's CIFAR models use option A
(stride-2 subsampling plus zero-padding of the new channels), but such a shortcut has no
parameters tying its channels to the residual branch, so the stage's channels cannot be pruned
structurally; option B keeps every channel dimension prunable by Torch-Pruning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.models._init import init_weights
from autoprune.models._registry import register_model, reject_kwargs

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``.

    When ``has_identity_shortcut`` is true the block computes ``relu(branch(x) + x)``, so a
    layer-pruning method may replace the whole block by ``nn.Identity()`` (dropping the final
    ReLU, which is accepted).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.has_identity_shortcut: bool = stride == 1 and in_planes == planes
        self.shortcut: nn.Module
        if self.has_identity_shortcut:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus shortcut, then ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem, three stages of BasicBlocks (strides 1, 2, 2), global average pool, ``fc``."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int],
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        stages: list[nn.Sequential] = []
        for i, (planes, count) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            strides = [1 if i == 0 else 2] + [1] * (count - 1)
            blocks: list[nn.Module] = []
            for stride in strides:
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``; works for any input of at least 1x1."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make(
    name: str, n: int, num_classes: int, in_channels: int, kwargs: dict[str, Any]
) -> CifarResNet:
    reject_kwargs(name, kwargs)
    return CifarResNet((n, n, n), num_classes, in_channels)


_ALL = ("prune", "grow", "layers")


@register_model(
    "cifar_resnet20", "cifar_resnet", description="CIFAR ResNet-20 (3 blocks/stage)", supports=_ALL
)
def cifar_resnet20(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR ResNet-20: 3 BasicBlocks per stage, ~0.27M parameters."""
    return _make("cifar_resnet20", 3, num_classes, in_channels, kw)


@register_model(
    "cifar_resnet32", "cifar_resnet", description="CIFAR ResNet-32 (5 blocks/stage)", supports=_ALL
)
def cifar_resnet32(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR ResNet-32: 5 BasicBlocks per stage, ~0.47M parameters."""
    return _make("cifar_resnet32", 5, num_classes, in_channels, kw)


@register_model(
    "cifar_resnet56", "cifar_resnet", description="CIFAR ResNet-56 (9 blocks/stage)", supports=_ALL
)
def cifar_resnet56(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR ResNet-56: 9 BasicBlocks per stage, ~0.86M parameters."""
    return _make("cifar_resnet56", 9, num_classes, in_channels, kw)


@register_model(
    "cifar_resnet110", "cifar_resnet", description="CIFAR ResNet-110 (18 blocks/stage)",
    supports=_ALL,
)
def cifar_resnet110(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR ResNet-110: 18 BasicBlocks per stage, ~1.7M parameters."""
    return _make("cifar_resnet110", 18, num_classes, in_channels, kw)
