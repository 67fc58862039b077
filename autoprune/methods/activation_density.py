"""Activation-density sizing (Foldy-Porto, Venkatesha & Panda, 2020, arXiv 2002.02949).

The activation density AD_l of a layer is the fraction of its post-ReLU outputs that are
non-zero; the paper uses it to find the right relative size of every layer and shrinks the
network periodically during training, from scratch. autoprune's formulation
(METHODS.md, section 2):

- during the first ``density_batches`` training batches of a resize epoch, measure for
  every channel the fraction of its outputs (over batch and space) that are > 0;
  ``AD_l`` is the mean over the layer's channels;
- every ``interval`` epochs from ``start_epoch``, resize each layer to
  :func:`density_width` ``= max(min_channels, ceil(aggressiveness * AD_l * width_l))``
  channels (never more than it has), keeping the channels that are non-zero most often;
- stop resizing for good once no layer shrinks by more than ``tolerance`` (a fraction of
  its width); that last, small resize is still applied. There is no global target ratio.

Choices the paper leaves open:

- Measured where: on the output of the group's batch norms (or, without one, its
  convolutions / linears): ``output > 0`` there is exactly "non-zero after the ReLU".
  A residual-coupled group (several layers summed into one tensor) averages its layers'
  per-channel densities; the ReLU after the sum is not a module we can hook.
- Groups with no rectifier (ReLU, ReLU6/Hardtanh) in their dependency group, such as
  MobileNetV2's linear bottlenecks, have no meaningful density (about one half for any
  symmetric output) and keep their width; their density is recorded as ``null``.
- The measurement rides on ordinary training steps (forward hooks), so it costs no extra
  pass and nothing is charged to the training FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch_pruning import ops

from autoprune.methods.base import ChannelParams, MethodParams, PruningMethod, register_method
from autoprune.methods.timing import epoch_field
from autoprune.surgery import ChannelGroup
from autoprune.validation import check_range

if TYPE_CHECKING:
    from autoprune.engine.context import TrainContext

_RECTIFIERS = ("Relu", "Hardtanh", "Threshold")
"""grad_fn names of rectifying activations (ReLU, ReLU6 = Hardtanh(0, 6))."""


@dataclass(frozen=True)
class ActivationDensityParams(ChannelParams):
    density_batches: int = 10
    """Training batches measured at the start of each resize epoch."""
    interval: int = epoch_field(1, "every")
    """Epochs between resizes."""
    start_epoch: int = epoch_field(1, "after")
    """First resize after this epoch."""
    aggressiveness: float = 1.0
    """Multiplier of the density: below 1 shrinks harder, above 1 more gently."""
    min_channels: int = 4
    """No layer is resized below this many channels (nor grown to reach it)."""
    tolerance: float = 0.05
    """Resizing stops when no layer shrinks by more than this fraction of its width."""

    def validate(self, epochs: int) -> None:
        check_range("method_params.density_batches", self.density_batches, 1, 1 << 20)
        check_range("method_params.interval", self.interval, 1, epochs)
        check_range("method_params.start_epoch", self.start_epoch, 1, epochs)
        check_range("method_params.aggressiveness", self.aggressiveness, 0.0, 10.0, low_open=True)
        check_range("method_params.min_channels", self.min_channels, 1, 1 << 20)
        check_range("method_params.tolerance", self.tolerance, 0.0, 1.0)


def density_width(width: int, density: float, aggressiveness: float, min_channels: int) -> int:
    """New width of a layer: ``max(min_channels, ceil(aggressiveness * density * width))``,
    never above ``width`` (resizing only shrinks). The ceiling forgives float noise
    (``ceil(0.3 * 10)`` is 3, not 4)."""
    target = math.ceil(aggressiveness * density * width - 1e-9)
    return min(width, max(min_channels, target, 1))


def is_rectified(group: ChannelGroup) -> bool:
    """Whether a rectifier (ReLU, ReLU6) acts on the group's channels."""
    return any(
        isinstance(dep.target.module, ops._ElementWiseOp)
        and any(r in str(dep.target.module._grad_fn) for r in _RECTIFIERS)
        for dep, _ in group.group
    )


class DensityMeter:
    """Per-channel fraction of positive outputs, measured during ordinary training steps.

    Hooks the batch norms (else convolutions / linears) of the given groups and, for the
    first ``max_batches`` training batches after :meth:`attach`, averages ``output > 0``
    over batch and space. Passes in eval mode are ignored.
    """

    def __init__(self, max_batches: int) -> None:
        self.max_batches = max_batches
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layers: dict[str, int] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: nn.Module, groups: Mapping[str, ChannelGroup]) -> None:
        self.detach()
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
                positive = (output.detach() > 0).float().mean(dim=dims)
            self.sums[key] = self.sums[key] + positive if key in self.sums else positive
            self.counts[key] = self.counts.get(key, 0) + 1

        return record

    def channel_density(self, key: str) -> torch.Tensor | None:
        """Per-channel fraction of positive outputs (None if nothing was measured)."""
        if key not in self.sums:
            return None
        return (self.sums[key] / self.counts[key]).float().cpu()

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


@register_method
class ActivationDensity(PruningMethod):
    """Shrink every layer towards its activation density until the sizes settle."""

    name = "activation_density"
    Params = ActivationDensityParams
    params: ActivationDensityParams

    def __init__(self, params: MethodParams) -> None:
        super().__init__(params)
        self.meter = DensityMeter(self.params.density_batches)
        self.settled = False

    def is_resize_epoch(self, epoch: int) -> bool:
        p = self.params
        due = epoch >= p.start_epoch and (epoch - p.start_epoch) % p.interval == 0
        return due and not self.settled

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        if self.is_resize_epoch(epoch):
            groups = {k: g for k, g in ctx.groups().items() if is_rectified(g)}
            self.meter.attach(ctx.model, groups)

    def on_epoch_end(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        if not self.is_resize_epoch(epoch):
            return {"resized": False, "settled": self.settled, "widths": ctx.widths()}
        self.meter.detach()
        before = ctx.widths()
        densities: dict[str, float | None] = {}
        plan: dict[str, list[int]] = {}
        for key, width in before.items():
            channel = self.meter.channel_density(key)
            densities[key] = None if channel is None else float(channel.mean())
            if channel is not None:
                keep = density_width(width, float(channel.mean()), self.params.aggressiveness,
                                     self.params.min_channels)
                plan[key] = torch.argsort(channel, stable=True)[: width - keep].tolist()
        shrink = max((len(v) / before[k] for k, v in plan.items()), default=0.0)
        self.settled = shrink <= self.params.tolerance
        removed = ctx.remove_channels(plan)
        return {
            "resized": True, "settled": self.settled, "densities": densities,
            "widths_before": before, "widths": ctx.widths(), "removed_channels": removed,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"settled": self.settled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.settled = bool(state.get("settled", False))
