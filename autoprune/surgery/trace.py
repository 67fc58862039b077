"""One forward pass with a hook on every selected submodule: the one tracing helper.

The dependency-free questions about a network ("which layer runs last", "which norm ends
this residual branch", "what does each layer receive and produce") are answered by
running it once and recording its module calls in execution order. :func:`trace_calls`
is that pass; graph tracing for surgery is Torch-Pruning's (``DependencyIndex``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Call:
    """One call of a submodule: its qualified name, the module, its positional inputs and
    its output (None when recorded ``before`` the call)."""

    name: str
    module: nn.Module
    inputs: tuple[Any, ...]
    output: Any


def trace_calls(
    model: nn.Module,
    x: torch.Tensor,
    select: Callable[[str, nn.Module], bool] | None = None,
    *,
    before: bool = False,
    eval_mode: bool = True,
    tolerate_errors: bool = False,
) -> list[Call]:
    """Run ``model(x)`` once without gradients and return the calls of the selected
    submodules (default: every one but the model itself) in execution order.

    ``eval_mode`` runs it in eval mode (the mode is restored afterwards), so batch norms
    neither update nor need more than one sample. ``before`` records each call as it
    starts (inputs only), so that the calls made before a failing layer are kept; with
    ``tolerate_errors`` an exception in the forward pass ends the trace instead of
    propagating. Records hold the tensors, so their ``id``s stay unique while in use.
    """
    chosen = select or (lambda name, _module: bool(name))
    calls: list[Call] = []
    handles = []
    for name, module in model.named_modules():
        if not chosen(name, module):
            continue
        if before:
            def pre(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                calls.append(Call(name, mod, args, None))

            handles.append(module.register_forward_pre_hook(pre))
        else:
            def post(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                calls.append(Call(name, mod, args, out))

            handles.append(module.register_forward_hook(post))
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        if not tolerate_errors:
            raise
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def is_leaf(name: str, module: nn.Module) -> bool:
    """A named submodule without children (a selector for :func:`trace_calls`)."""
    return bool(name) and not any(True for _ in module.children())


__all__ = ["Call", "is_leaf", "trace_calls"]
