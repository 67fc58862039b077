"""Physical removal of channels from dependency groups, optimiser state carried over."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from autoprune.surgery.graph import DependencyIndex
from autoprune.surgery.optimizer_state import ParamRemap, gather_flat


class SurgeryError(RuntimeError):
    """A structural change that cannot be made (e.g. it would leave a layer empty)."""


def remove_channels(
    model: nn.Module,
    plan: Mapping[str, Sequence[int]],
    example_input: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    index: DependencyIndex | None = None,
) -> int:
    """Cut channels out of the model's tensors; return how many channels were removed.

    ``plan`` maps a group key (see :class:`DependencyIndex`) to the indices of the
    channels to remove. Every coupled layer shrinks with its group. Groups that grouped
    convolutions split into blocks lose the same number (and, where a grouped convolution
    consumes them, the same positions) from every block: :meth:`DependencyIndex.conform`.
    Parameters are replaced by smaller ones; the optimiser (if given) is rebound to them and
    keeps the state of the surviving elements.

    Where each surviving element came from is found by tagging: every parameter is
    temporarily filled with its own flat element indices (float64, exact up to 2**53),
    Torch-Pruning slices them like any weights, and the survivors' tags say which old
    element each new one is. This holds for any layout Torch-Pruning handles (grouped and
    depthwise convolutions, concatenations, transposed weights) without re-deriving it.
    """
    index = index or DependencyIndex(model, example_input)
    unknown = [k for k in plan if k not in index.groups]
    if unknown:
        raise SurgeryError(f"no prunable channel group named {unknown[0]!r}")
    conformed = {k: index.conform(k, v) for k, v in plan.items() if len(v)}
    plan = {k: v for k, v in conformed.items() if v}
    if not plan:
        return 0
    remap = ParamRemap(model)
    values = {n: p.detach().clone() for n, p in remap.before.items()}
    with torch.no_grad():
        for p in remap.before.values():
            p.grad = None
            p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view_as(p)
    try:
        for key, idxs in plan.items():
            group = index.pruning_group(key, list(idxs))
            if not index.graph.check_pruning_group(group):
                raise SurgeryError(
                    f"removing {len(idxs)} of {index.groups[key].width} channels "
                    f"would leave group {key!r} empty"
                )
            group.prune(record_history=False)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dtype == torch.float64 and name in values:
                    source = p.data.long().reshape(-1)
                    remap.sources[name] = source
                    p.data = gather_flat(values[name], source, p.shape)
    remap.rebind(optimizer)
    return sum(len(v) for v in plan.values())
