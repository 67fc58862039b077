"""Model registry: CIFAR ResNets/VGGs, small nets for tiny inputs, torchvision CNNs.

>>> model = create_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=32)

Every model maps ``(N, in_channels, input_size, input_size)`` to ``(N, num_classes)`` logits
and is built from plain ``nn.Module`` layers so Torch-Pruning's DependencyGraph can prune it.
"""

from __future__ import annotations

# Importing the model modules registers their builders.
from autoprune.models import cifar_resnet, cifar_vgg, small, torchvision_models  # noqa: F401
from autoprune.models._registry import (
    FAMILIES,
    ModelInfo,
    create_model,
    is_registered,
    list_models,
    model_info,
    register_model,
)
from autoprune.models.cifar_resnet import BasicBlock, CifarResNet

__all__ = [
    "FAMILIES",
    "BasicBlock",
    "CifarResNet",
    "ModelInfo",
    "create_model",
    "is_registered",
    "list_models",
    "model_info",
    "register_model",
]
