"""A network and a dataset of your own, as autoprune takes them (see README.md here).

``build`` returns a plain ``nn.Module``; autoprune passes ``num_classes`` and
``in_channels`` (it reads them from the data) and whatever ``model_kwargs`` the config
gives (here ``width``). ``load_data`` returns ``(train, test)`` map-style datasets of
``(image tensor C x H x W, int label)``; autoprune carves the validation split out of
train. Both work offline: the images are scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class SqueezeExcite(nn.Module):
    """Channel attention: the block's output scaled by a gate computed from itself."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class MyNet(nn.Module):
    """Two convolutions, a squeeze-excitation block, a residual block, a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True))
        self.conv = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True))
        self.se = SqueezeExcite(2 * width)
        self.res = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.conv(self.stem(x)))
        x = torch.relu(x + self.res(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(num_classes: int, in_channels: int, width: int = 16) -> nn.Module:
    """The network autoprune trains and prunes (``model: mynet:build``)."""
    return MyNet(num_classes, in_channels, width)


def load_data(test_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
    """The 8x8 digits as (train, test) datasets of (1x8x8 float image in [0, 1], label)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(len(labels) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test])
