"""Carry an optimiser's state across a structural change of the model.

Surgery replaces parameter tensors with smaller (pruning) or larger (growth) ones. The
optimiser still points at the old tensors and holds per-element state (SGD momentum,
Adam moments) shaped like them. :class:`ParamRemap` records, per parameter name, where
each element of the new tensor came from (a flat index into the old tensor, or -1 for a
new element), and rebinds the optimiser to the new tensors with their state gathered
the same way: surviving weights keep their momentum, new weights start from zero.
"""

from __future__ import annotations

import torch
from torch import nn


class ParamRemap:
    """Snapshot of a model's parameters before a structural change.

    Usage::

        remap = ParamRemap(model)
        ...  # change the model, filling remap.sources[name] for reshaped parameters
        remap.rebind(optimizer)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.before: dict[str, nn.Parameter] = dict(model.named_parameters())
        self.sources: dict[str, torch.Tensor] = {}

    def rebind(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Point ``optimizer`` at the model's current parameters, remapping their state."""
        if optimizer is None:
            return
        after = dict(self.model.named_parameters())
        names = {id(p): n for n, p in self.before.items()}
        seen: set[str] = set()
        for group in optimizer.param_groups:
            new_params = []
            for old in group["params"]:
                name = names.get(id(old))
                state = optimizer.state.pop(old, None)
                if name is None or name not in after:
                    continue  # the parameter left the model (e.g. a removed block)
                new = after[name]
                seen.add(name)
                new_params.append(new)
                if state:
                    optimizer.state[new] = self._remap_state(name, old, new, state)
            group["params"] = new_params
        missing = [p for n, p in after.items() if n not in seen and p.requires_grad]
        if missing:  # parameters the change created: train them with the first group's settings
            optimizer.param_groups[0]["params"].extend(missing)

    def _remap_state(
        self, name: str, old: torch.Tensor, new: torch.Tensor, state: dict
    ) -> dict:
        source = self.sources.get(name)
        remapped = {}
        for key, value in state.items():
            if not torch.is_tensor(value) or value.shape != old.shape:
                remapped[key] = value  # scalars such as Adam's step count
            elif source is None:
                remapped[key] = value if value.shape == new.shape else torch.zeros_like(new)
            else:
                remapped[key] = gather_flat(value, source, new.shape)
        return remapped


def gather_flat(old: torch.Tensor, source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """New tensor of ``shape`` whose element i is ``old.flatten()[source[i]]`` (0 where -1)."""
    flat = old.detach().reshape(-1)
    valid = source >= 0
    out = torch.zeros(source.numel(), dtype=old.dtype, device=old.device)
    out[valid] = flat[source[valid]]
    return out.view(shape)
