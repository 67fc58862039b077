"""Trial removals on a copy: does the network still run once its channels are cut?

Torch-Pruning follows channels through the operations it traces, but a forward pass may
also hold sizes of its own (``x.view(n, 32 * 4 * 4)``, a hard-coded split): the graph
accepts the cut and the pruned network then fails. :func:`probe_removal` finds such
groups before any training, by cutting one channel of every group (one per block for
grouped convolutions) from a deep copy and running it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoprune.surgery.graph import DependencyIndex
from autoprune.surgery.remove import remove_channels


def _one_channel_plan(index: DependencyIndex, keys: list[str]) -> dict[str, list[int]]:
    plan: dict[str, list[int]] = {}
    for key in keys:
        group = index.groups[key]
        per = group.width // group.slots
        if per > 1:
            plan[key] = [b * per + per - 1 for b in range(group.slots)]
    return plan


def _fails(model: nn.Module, example: torch.Tensor, keys: list[str]) -> str | None:
    """Why cutting one channel of each of ``keys`` from a copy of ``model`` breaks it."""
    probe = copy.deepcopy(model).eval()
    try:
        index = DependencyIndex(probe, example)
        plan = _one_channel_plan(index, keys)
        if not plan:
            return None
        remove_channels(probe, plan, example, None, index)
        with torch.no_grad():
            out = probe(example)
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything
        text = " ".join(str(exc).split())[:200] or "no message"
        return f"{type(exc).__name__}: {text}"
    if not isinstance(out, torch.Tensor):
        return f"the pruned network returns a {type(out).__name__}"
    return None


def probe_removal(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """Group key -> why the network fails once a channel of that group is removed; empty
    when every group can lose channels. One copy in the common case (all groups at once),
    one per group only when that fails."""
    example = example_input[:1]
    was_training = model.training
    try:
        keys = list(DependencyIndex(model, example).groups)
        if _fails(model, example, keys) is None:
            return {}
        found = {key: _fails(model, example, [key]) for key in keys}
    finally:
        model.train(was_training)
    return {key: why for key, why in found.items() if why is not None}


def _zero(model: nn.Module, index: DependencyIndex, plan: dict[str, list[int]]) -> None:
    """Zero the planned channels where they are produced (weights, biases, norm affines)."""
    named = dict(model.named_modules())
    with torch.no_grad():
        for key, idxs in plan.items():
            for name in index.groups[key].out_modules:
                for tensor in (getattr(named[name], "weight", None),
                               getattr(named[name], "bias", None)):
                    if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
                        tensor[idxs] = 0


def _changes_function(model: nn.Module, example: torch.Tensor, keys: list[str]) -> bool:
    """Whether removing a channel of each of ``keys`` computes something else than zeroing
    it first: then the surgery followed the channels in shape only."""
    probe = copy.deepcopy(model).eval()
    try:
        index = DependencyIndex(probe, example)
        plan = {k: index.conform(k, v) for k, v in _one_channel_plan(index, keys).items()}
        plan = {k: v for k, v in plan.items() if v}
        if not plan:
            return False
        _zero(probe, index, plan)
        with torch.no_grad():
            before = probe(example)
            remove_channels(probe, plan, example, None, index)
            after = probe(example)
    except Exception:  # noqa: BLE001 - a network that breaks is probe_removal's finding
        return False
    scale = float(before.abs().max()) or 1.0
    return not torch.allclose(after, before, rtol=1e-3, atol=1e-4 * scale)


def probe_function(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Keys of the groups whose physical removal changes more than the removed channels
    (e.g. a channel shuffle, which Torch-Pruning follows in shape but not in position):
    pruning runs, but cuts other inputs than the channels it chose. Also flags layers whose
    output is not zero for a zeroed channel (LayerNorm across channels, a softplus)."""
    example = example_input[:1]
    was_training = model.training
    try:
        keys = list(DependencyIndex(model, example).groups)
        if not _changes_function(model, example, keys):
            return []
        return [key for key in keys if _changes_function(model, example, [key])]
    finally:
        model.train(was_training)


__all__ = ["probe_function", "probe_removal"]
