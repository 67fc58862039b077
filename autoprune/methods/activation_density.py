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

Two rules decide which layers a due resize touches (``rule``):

- ``paper``: every measured layer, every time (the formulation above, as written). On a
  network with batch norm before the ReLU this collapses: batch norm centres every
  channel's pre-activation, so about half of any live channel's outputs are positive, the
  density is ~0.5 in every layer at every resize, and each resize halves the network again
  down to ``min_channels`` (ResNet-20 on Fashion-MNIST: 95x fewer parameters, -20 points;
  docs/benchmarks/seed-methods.md).
- ``settle`` (default): the paper's plateau reading per layer. A layer is resized at its
  first due resize; at a later one only if its density fell by at least ``min_drop``
  since its last resize; otherwise it has found its size and is settled for good. A
  density that no longer falls says the layer is no longer over-sized (a dead channel
  lowers it, a live one keeps it), so BN networks shrink to their density once and stop,
  while a layer whose channels keep dying keeps shrinking. The run settles when every
  measured layer has.

Choices the paper leaves open:

- Measured where: on the output of the group's batch norms (or, without one, its
  convolutions / linears): ``output > 0`` there is exactly "non-zero after the ReLU".
  A residual-coupled group (several layers summed into one tensor) averages its layers'
  per-channel densities; the ReLU after the sum is not a module we can hook.
- Groups with no rectifier (ReLU, ReLU6/Hardtanh) in their dependency group, such as
  MobileNetV2's linear bottlenecks, have no meaningful density (about one half for any
  symmetric output) and keep their width; their density is recorded as ``null``.
- The measurement rides on ordinary training steps (:mod:`~autoprune.methods._meter`, the
  meter filter pruning's ``mean_activation`` uses too), so it costs no extra pass and
  nothing is charged to the training FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch_pruning import ops

from autoprune.methods._meter import ChannelMeter, positive_fraction
from autoprune.methods.base import (
    ChannelParams,
    MethodParams,
    PruningMethod,
    bounded,
    register_method,
)
from autoprune.methods.timing import epoch_field
from autoprune.surgery import ChannelGroup

if TYPE_CHECKING:
    from autoprune.engine.context import TrainContext

_RECTIFIERS = ("Relu", "Hardtanh", "Threshold")
"""grad_fn names of rectifying activations (ReLU, ReLU6 = Hardtanh(0, 6))."""


@dataclass(frozen=True)
class ActivationDensityParams(ChannelParams):
    density_batches: int = bounded(10, 1, 1 << 20)
    """Training batches measured at the start of each resize epoch."""
    interval: int = epoch_field(1, "every")
    """Epochs between resizes."""
    start_epoch: int = epoch_field(1, "after")
    """First resize after this epoch."""
    aggressiveness: float = bounded(1.0, 0.0, 10.0, low_open=True)
    """Multiplier of the density: below 1 shrinks harder, above 1 more gently."""
    min_channels: int = bounded(4, 1, 1 << 20)
    """No layer is resized below this many channels (nor grown to reach it)."""
    tolerance: float = bounded(0.05, 0.0, 1.0)
    """Resizing stops when no layer shrinks by more than this fraction of its width."""
    rule: Literal["settle", "paper"] = "settle"
    """Which layers a due resize touches: ``settle`` (each layer until its density stops
    falling) or ``paper`` (every layer, every time; collapses on batch-norm networks)."""
    min_drop: float = bounded(0.02, 0.0, 1.0)
    """``settle``: a layer is resized again only if its density fell by this much since
    its last resize."""


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


@register_method
class ActivationDensity(PruningMethod):
    """Shrink every layer towards its activation density until the sizes settle."""

    name = "activation_density"
    Params = ActivationDensityParams
    params: ActivationDensityParams

    def __init__(self, params: MethodParams) -> None:
        super().__init__(params)
        self.meter = ChannelMeter(self.params.density_batches, positive_fraction)
        self.settled = False
        self.last_density: dict[str, float] = {}
        """Density of each layer at its last resize (``settle``)."""
        self.settled_layers: set[str] = set()

    def is_resize_epoch(self, epoch: int) -> bool:
        p = self.params
        due = epoch >= p.start_epoch and (epoch - p.start_epoch) % p.interval == 0
        return due and not self.settled

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        if self.is_resize_epoch(epoch):
            groups = {k: g for k, g in ctx.groups().items() if is_rectified(g)}
            self.meter.attach(ctx.model, groups, ctx.replicas.reduce_sum)

    def on_epoch_end(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        if not self.is_resize_epoch(epoch):
            return {"resized": False, "settled": self.settled, "widths": ctx.widths()}
        self.meter.detach()
        before = ctx.widths()
        densities: dict[str, float | None] = {}
        plan: dict[str, list[int]] = {}
        for key, width in before.items():
            channel = self.meter.mean(key)
            densities[key] = None if channel is None else float(channel.mean())
            if channel is None or not self._resizes(key, float(channel.mean())):
                continue
            keep = density_width(width, float(channel.mean()), self.params.aggressiveness,
                                 self.params.min_channels)
            plan[key] = torch.argsort(channel, stable=True)[: width - keep].tolist()
        shrink = max((len(v) / before[k] for k, v in plan.items()), default=0.0)
        self.settled = shrink <= self.params.tolerance
        if self.params.rule == "settle":
            measured = {k for k, d in densities.items() if d is not None}
            self.settled = self.settled or measured <= self.settled_layers
        removed = ctx.remove_channels(plan)
        return {
            "resized": True, "settled": self.settled, "densities": densities,
            "widths_before": before, "widths": ctx.widths(), "removed_channels": removed,
            "settled_layers": sorted(self.settled_layers),
        }

    def _resizes(self, key: str, density: float) -> bool:
        """Whether this resize touches layer ``key`` (and, under ``settle``, bookkeeping)."""
        if self.params.rule == "paper":
            return True
        if key in self.settled_layers:
            return False
        last = self.last_density.get(key)
        if last is not None and density > last - self.params.min_drop:
            self.settled_layers.add(key)
            return False
        self.last_density[key] = density
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"settled": self.settled, "last_density": dict(self.last_density),
                "settled_layers": sorted(self.settled_layers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.settled = bool(state.get("settled", False))
        self.last_density = {str(k): float(v) for k, v in state.get("last_density", {}).items()}
        self.settled_layers = set(state.get("settled_layers", []))
