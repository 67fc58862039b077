"""One activation meter for every method that measures channels on training batches.

:class:`ChannelMeter` hooks the batch norms of the given channel groups (else their
convolutions, else their linears): what a norm outputs is what the following ReLU sees,
so ``output > 0`` there is "non-zero after the ReLU" and ``relu(output)`` is the
post-ReLU activation. For the first ``max_batches`` training batches after
:meth:`~ChannelMeter.attach` it averages a per-element statistic over batch and space,
per channel; a group with several hooked layers (a residual-coupled group) averages them.
It rides on ordinary training forward passes (no extra pass, nothing charged to the
training FLOPs) and ignores passes in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from autoprune.surgery import ChannelGroup

Statistic = Callable[[torch.Tensor], torch.Tensor]


def positive_fraction(output: torch.Tensor) -> torch.Tensor:
    """1 where an output is positive (its mean is the activation density)."""
    return (output > 0).float()


def post_relu(output: torch.Tensor) -> torch.Tensor:
    """The output after a ReLU (its mean is the mean activation)."""
    return output.relu().float()


class ChannelMeter:
    """Per-channel mean of ``statistic(output)`` over the first training batches."""

    def __init__(self, max_batches: int, statistic: Statistic) -> None:
        self.max_batches = max_batches
        self.statistic = statistic
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layers: dict[str, int] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    def attach(self, model: nn.Module, groups: Mapping[str, ChannelGroup],
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Start measuring ``groups`` (anything measured before is dropped). ``reduce``
        sums a tensor over data-parallel workers (``ctx.replicas.reduce_sum``)."""
        self.detach()
        self.reduce = reduce or (lambda t: t)
        self.sums, self.counts, self.layers = {}, {}, {}
        for key, group in groups.items():
            layers = group.modules_of_type(model, nn.modules.batchnorm._BatchNorm)
            layers = layers or group.modules_of_type(model, nn.Conv2d)
            layers = layers or group.modules_of_type(model, nn.Linear)
            self.layers[key] = len(layers)
            for layer in layers:
                self._hooks.append(layer.register_forward_hook(self._hook(key)))

    def _hook(self, key: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            full = self.counts.get(key, 0) >= self.max_batches * self.layers[key]
            if full or not module.training:
                return
            with torch.no_grad():
                dims = [d for d in range(output.dim()) if d != 1]
                value = self.statistic(output.detach()).mean(dim=dims)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

        return record

    def mean(self, key: str) -> torch.Tensor | None:
        """Per-channel mean for group ``key`` (None if nothing was measured); on N
        data-parallel workers, over every worker's batches."""
        if key not in self.sums:
            return None
        sums = self.reduce(self.sums[key])
        count = self.reduce(torch.tensor(float(self.counts[key]), device=sums.device))
        return (sums / count).float().cpu()

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


__all__ = ["ChannelMeter", "positive_fraction", "post_relu"]
