"""Every torchvision classification CNN, under its torchvision name, randomly initialised.

Transformers (``vit_*``, ``swin_*``, ``maxvit_*``) are left out. Models are built with
``weights=None`` and the requested ``num_classes``; for ``in_channels != 3`` the first
``nn.Conv2d`` (in ``modules()`` order) is replaced by a fresh one with the same geometry.
Names are registered the first time the registry needs them (a listing, or a name that is
not one of autoprune's own models), so that importing autoprune does not import
torchvision; nothing is instantiated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from autoprune.errors import UserError
from autoprune.models._registry import register_model, register_provider

__all__ = ["replace_first_conv", "torchvision_names"]

T = TypeVar("T")

_EXCLUDED_PREFIXES = ("vit_", "swin_", "maxvit_")

# Smallest square input from which every size up to 160 gives a forward pass, measured once with
# batch 2 (train and eval mode) on meta and CPU, torchvision 0.29. Keys are name prefixes; models
# matching none (resnet*, resnext*, wide_resnet*, regnet_*, efficientnet_*, mnasnet*,
# mobilenet_*, shufflenet_*) work at any size, so they get the floor of 8. Sizes are exact
# thresholds, not grid points: densenet works at 32 but fails at 28 (an average pool meets a
# 1x1 map), squeezenet fails at 16 but works at 28.
_MIN_INPUT_SIZE: dict[str, int] = {
    "alexnet": 63,
    "convnext_": 32,
    "densenet": 29,
    "googlenet": 15,
    "inception_v3": 75,
    "squeezenet1_0": 21,
    "squeezenet1_1": 17,
    "vgg": 32,
}
_DEFAULT_MIN_INPUT_SIZE = 8

# Known pruning caveats (Torch-Pruning 1.6.1), by name prefix; appended to the description.
_NOTES: dict[str, str] = {
    "shufflenet_v2": "; trains dense only: its channel shuffle cannot be followed for pruning",
    "regnet_": "; grouped convs lose the same channels in every group",
    "resnext": "; grouped convs lose the same channels in every group",
    "convnext_": "; LayerNorm over channels: pruning changes its statistics",
}

# Structural changes each model allows (see ModelInfo.supports), by name prefix, measured
# with autoprune.methods.support on every model (torchvision 0.29, Torch-Pruning 1.6.1);
# tests/test_models.py measures it again on every model it can build. Why not: a flatten
# of a 7x7 map into the classifier (alexnet, vgg) or a concatenation (densenet, googlenet,
# inception, squeezenet) cannot grow, nor can grouped convs (regnet, resnext) or LayerNorm
# (convnext); regnet's, efficientnet's, mnasnet's and convnext's residual blocks are not
# recognised as removable.
_SUPPORTS: dict[str, tuple[str, ...]] = {
    "alexnet": ("prune",),
    "convnext_": ("prune",),
    "densenet": ("prune",),
    "googlenet": ("prune",),
    "inception_v3": ("prune",),
    "regnet_": ("prune",),
    "resnext": ("prune", "layers"),
    "shufflenet_v2": (),
    "squeezenet": ("prune",),
    "vgg": ("prune",),
    "efficientnet_": ("prune", "grow"),
    "mnasnet": ("prune", "grow"),
}
_DEFAULT_SUPPORTS = ("prune", "grow", "layers")  # resnet*, wide_resnet*, mobilenet_*

# Builder options that autoprune sets itself.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": False},
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": False},
}


def _by_prefix(table: dict[str, T], name: str, default: T) -> T:
    """The value of the first key of ``table`` that ``name`` starts with."""
    return next((value for prefix, value in table.items() if name.startswith(prefix)), default)


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` for one taking ``in_channels`` inputs; returns ``model``.

    The new conv keeps kernel, stride, padding, dilation and bias, and gets PyTorch's default
    initialisation (the model is randomly initialised anyway).
    """
    convs = ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    name, module = next(convs, ("", None))
    if module is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d")
    if module.in_channels == in_channels:
        return model
    if module.groups != 1:
        raise ValueError(f"first conv {name!r} is grouped; cannot change its input channels")
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        kernel_size=module.kernel_size,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return model


def _make_builder(tv_name: str) -> Callable[..., nn.Module]:
    """A registry builder for one torchvision model name."""

    def builder(num_classes: int, in_channels: int, input_size: int, **kwargs: Any) -> nn.Module:
        reserved = {"weights", "num_classes"} & kwargs.keys()
        if reserved:
            raise UserError(f"model {tv_name!r}: option(s) {sorted(reserved)} are set by autoprune")
        import torchvision

        options = {**_EXTRA_KWARGS.get(tv_name, {}), **kwargs}
        model = torchvision.models.get_model(
            tv_name, weights=None, num_classes=num_classes, **options
        )
        return replace_first_conv(model, in_channels)

    builder.__name__ = builder.__qualname__ = tv_name
    builder.__doc__ = f"torchvision.models.{tv_name}, random init, first conv adapted."
    return builder


def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification CNNs (transformers left out)."""
    import torchvision

    return tuple(name for name in torchvision.models.list_models(module=torchvision.models)
                 if not name.startswith(_EXCLUDED_PREFIXES))


def _register_all() -> None:
    for name in torchvision_names():
        register_model(
            name,
            "torchvision",
            min_input_size=_by_prefix(_MIN_INPUT_SIZE, name, _DEFAULT_MIN_INPUT_SIZE),
            description=f"torchvision {name} (weights=None; first conv adapted to in_channels)"
            + _by_prefix(_NOTES, name, ""),
            supports=_by_prefix(_SUPPORTS, name, _DEFAULT_SUPPORTS),
        )(_make_builder(name))


register_provider(_register_all)
