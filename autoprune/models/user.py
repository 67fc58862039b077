"""The user's own network: ``model: "module:callable"`` (or a callable passed to the API).

The callable returns an ``nn.Module`` mapping ``(N, C, H, W)`` images to ``(N, classes)``
logits. It gets the config's ``model_kwargs``, plus ``num_classes``, ``in_channels`` and
``input_size`` (from the data) where its signature accepts them. What it returns is
checked at once, on one input of the data's shape: a module, with logits of the right
shape; anything else is a one-line :class:`~autoprune.errors.UserError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autoprune.errors import ConfigError, UserError

DATA_ARGS = ("num_classes", "in_channels", "input_size")
"""What a network's builder learns from the data, when its signature names it."""


def build_user_model(
    reference: str,
    kwargs: Mapping[str, Any],
    num_classes: int,
    in_channels: int,
    input_size: int | tuple[int, int],
    builder: Callable[..., Any] | None = None,
) -> nn.Module:
    """Call the network's builder (``builder``, else the one ``reference`` names) and check
    what it returns. The result is tagged with ``autoprune_build`` for saving."""
    from autoprune.references import resolve

    builder = builder or resolve(reference, "model")
    for key in DATA_ARGS:
        if key in kwargs:
            raise ConfigError(f"model_kwargs.{key}: comes from the data, do not set it")
    data = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    call = {**{k: v for k, v in data.items() if _accepts(builder, k)}, **kwargs}
    try:
        model = builder(**call)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        text = " ".join(str(exc).split())[:300]
        args = ", ".join(f"{k}={v!r}" for k, v in call.items())
        raise UserError(f"model: calling {reference}({args}) failed: {type(exc).__name__}: "
                        f"{text}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model: {reference} returned a {type(model).__name__}, not a "
                        "torch.nn.Module")
    check_logits(model, reference, num_classes, in_channels, input_size)
    model.autoprune_build = {  # type: ignore[assignment]
        "reference": reference, "kwargs": dict(kwargs), "num_classes": num_classes,
        "in_channels": in_channels, "input_size": input_size,
    }
    return model


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it nothing
        return False
    if name in params:
        return params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def input_hw(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = input_size
    return int(height), int(width)


def check_logits(model: nn.Module, reference: str, num_classes: int, in_channels: int,
                 input_size: int | tuple[int, int]) -> None:
    """UserError unless ``model`` maps one input of the data's shape to ``(1, classes)``."""
    shape = (2, in_channels, *input_hw(input_size))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001
        text = " ".join(str(exc).split())[:300]
        raise UserError(f"model: {reference} fails on inputs of shape {list(shape)} (from the "
                        f"data): {type(exc).__name__}: {text}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model: {reference} maps inputs {list(shape)} to {got}; expected "
                        f"logits [2, {num_classes}] (N x classes, from the data)")


__all__ = ["DATA_ARGS", "build_user_model", "check_logits", "input_hw"]
