"""Model registry: maps a name to a builder function and its metadata (timm-style).

Builders register themselves with :func:`register_model` when their module is imported;
``autoprune.models`` imports every model module. A family whose names are expensive to
learn (torchvision's: importing it costs seconds) registers a *provider* instead, run the
first time a listing or an unknown name needs the complete registry. Builders have the signature
``builder(num_classes, in_channels, input_size, **kwargs) -> nn.Module``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from autoprune.errors import UserError

__all__ = [
    "FAMILIES",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "register_provider",
    "reject_kwargs",
]

FAMILIES: tuple[str, ...] = ("cifar_resnet", "cifar_vgg", "small", "torchvision")

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered model without building it."""

    name: str
    family: str
    min_input_size: int
    description: str
    supports: tuple[str, ...] = ("prune", "grow")
    """Structural changes the model allows, a subset of ``("prune", "grow", "layers")``:
    channel removal, channel growth (cgap), removal of residual branches (variational).
    Measured on the network (``autoprune.methods.support``); the model tests check it."""


_INFOS: dict[str, ModelInfo] = {}
_BUILDERS: dict[str, Builder] = {}
_PROVIDERS: list[Callable[[], None]] = []


def register_provider(provider: Callable[[], None]) -> None:
    """``provider()`` registers more models; it runs once, when a listing or a name not yet
    registered needs them."""
    _PROVIDERS.append(provider)


def _complete() -> None:
    while _PROVIDERS:
        _PROVIDERS.pop(0)()


SUPPORT_KINDS: tuple[str, ...] = ("prune", "grow", "layers")


def register_model(
    name: str,
    family: str,
    min_input_size: int = 8,
    description: str = "",
    supports: tuple[str, ...] = ("prune", "grow"),
) -> Callable[[B], B]:
    """Decorator registering ``builder`` under ``name``; returns the builder unchanged.

    ``min_input_size`` is the smallest square input (in pixels) the model accepts, such that
    every larger size works too; :func:`create_model` refuses smaller inputs.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    if min_input_size < 1:
        raise ValueError(f"min_input_size must be >= 1, got {min_input_size}")
    if not set(supports) <= set(SUPPORT_KINDS):
        raise ValueError(f"supports must be a subset of {SUPPORT_KINDS}, got {supports}")

    def decorator(builder: B) -> B:
        if name in _INFOS:
            raise ValueError(f"model {name!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        text = description or (doc[0] if doc else name)
        kinds = tuple(k for k in SUPPORT_KINDS if k in supports)
        _INFOS[name] = ModelInfo(name, family, min_input_size, text, kinds)
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of all registered models, optionally filtered by an fnmatch pattern."""
    _complete()
    names = sorted(_INFOS)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model; the providers run only for a name that is
    not registered yet (torchvision's names cost an import of torchvision)."""
    if name not in _INFOS:
        _complete()
    return name in _INFOS


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; raises :class:`UserError` for an unknown name."""
    if name not in _INFOS:
        _complete()
    try:
        return _INFOS[name]
    except KeyError:
        raise UserError(_unknown_message(name)) from None


def create_model(
    name: str, num_classes: int, in_channels: int = 3, input_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build a freshly initialised model returning ``(N, num_classes)`` logits.

    The model takes ``(N, in_channels, input_size, input_size)`` inputs. Construction is
    deterministic under ``torch.manual_seed`` and honours a ``torch.device(...)`` context.
    """
    info = model_info(name)
    for label, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("input_size", input_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"model {name!r}: {label} must be a positive integer, got {value!r}")
    if input_size < info.min_input_size:
        raise UserError(
            f"model {name!r} needs inputs of at least {info.min_input_size}x"
            f"{info.min_input_size} pixels; the dataset gives {input_size}x{input_size}"
        )
    return _BUILDERS[name](num_classes, in_channels, input_size, **kwargs)


def reject_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`UserError` if a builder got options it does not understand."""
    if kwargs:
        raise UserError(f"model {name!r} takes no extra options, got: {', '.join(sorted(kwargs))}")


def _unknown_message(name: str) -> str:
    """One line naming the unknown model and up to five close matches."""
    close = difflib.get_close_matches(name, list(_INFOS), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see list_models()"
    return f"unknown model {name!r}{hint}"
