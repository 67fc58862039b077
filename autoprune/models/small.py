"""Small, fast networks for tiny inputs (8x8 digits, 28x28 MNIST); the fast tests use them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.models._init import init_weights
from autoprune.models._registry import register_model, reject_kwargs
from autoprune.models.cifar_resnet import CifarResNet

__all__ = ["InvertedResidual", "SmallCNN", "SmallMobileNet"]


def _conv_bn(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> list[nn.Module]:
    """Conv (bias-free, 'same' padding) + BN (+ activation) as a list of layers."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return layers


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers (32, 32, 64, 64), pooled twice when the input is >= 16 pixels."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        pool = input_size >= 16
        layers = _conv_bn(in_channels, 32, 3) + _conv_bn(32, 32, 3)
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += _conv_bn(32, 64, 3) + _conv_bn(64, 64, 3)
        if pool:
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project (+ identity residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual: bool = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *_conv_bn(cin, hidden, 1, act=nn.ReLU6),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            *_conv_bn(hidden, cout, 1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + conv(x)`` when shapes allow, else ``conv(x)``."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class SmallMobileNet(nn.Module):
    """MobileNetV2-style: stem, 4 inverted residuals (one with identity), 1x1 head, classifier.

    Strides 1, 2, 1, 2 bring 8x8 inputs to 2x2 and 28x28 to 7x7.
    """

    # (out_channels, stride, expansion)
    SETTINGS: tuple[tuple[int, int, int], ...] = ((24, 1, 4), (32, 2, 6), (32, 1, 6), (64, 2, 6))

    def __init__(
        self, num_classes: int, in_channels: int = 3, stem: int = 16, head: int = 256
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_bn(in_channels, stem, 3, act=nn.ReLU6)
        channels = stem
        for cout, stride, expansion in self.SETTINGS:
            layers.append(InvertedResidual(channels, cout, stride, expansion))
            channels = cout
        layers += _conv_bn(channels, head, 1, act=nn.ReLU6)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("small_cnn", "small", description="4-layer conv-BN-ReLU CNN (32-32-64-64)")
def small_cnn(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """Plain 4-layer CNN, ~66K parameters."""
    reject_kwargs("small_cnn", kw)
    return SmallCNN(num_classes, in_channels, input_size)


@register_model(
    "small_resnet", "small", description="CIFAR ResNet-8 (1 block/stage, 16/32/64)",
    supports=("prune", "grow", "layers"),
)
def small_resnet(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """CIFAR ResNet with one BasicBlock per stage (depth 8), ~80K parameters."""
    reject_kwargs("small_resnet", kw)
    return CifarResNet((1, 1, 1), num_classes, in_channels)


@register_model(
    "small_mobilenet", "small", description="MobileNetV2-style net, 4 IR blocks",
    supports=("prune", "grow", "layers"),
)
def small_mobilenet(num_classes: int, in_channels: int, input_size: int, **kw: Any) -> nn.Module:
    """Small MobileNetV2-style network with depthwise convs and ReLU6."""
    reject_kwargs("small_mobilenet", kw)
    return SmallMobileNet(num_classes, in_channels)
