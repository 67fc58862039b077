"""Continuous Growth and Pruning (CGaP; Du, Li & Cao, 2019, arXiv 1905.11533).

Train from a small seed network, grow it by reinforcing its most important filters, then
prune it to a compact model (METHODS.md, section 4):

- **seed** (``setup``): every prunable channel group shrinks to ``seed_width`` of its
  dense width (the first channels are kept: at initialisation any choice is as good);
- **saliency**: per filter, ``|weight x gradient|`` summed over the filter's elements and
  over the group's coupled convolutions / linears (a residual-coupled channel counts every
  filter feeding it), accumulated over every step of the epoch before a growth or prune
  step (the first-order Taylor estimate of the loss change were the filter removed);
- **growth**, until ``growth_end_epoch``: every ``growth_interval`` epochs, the most
  salient filters of each layer are split (:func:`autoprune.surgery.grow.grow_channels`:
  exact copy, outgoing weights shared, zero-sum noise of scale ``noise`` on the shares),
  so the function is preserved at the moment of growth;
- **pruning**, from ``prune_start_epoch`` to ``prune_end_epoch``: the least salient
  filters are removed, globally, so that the removed fraction of the grown network's
  filters follows a :class:`PruningSchedule` ramp up to ``prune_ratio``.

Choices the paper leaves open (see :func:`growth_plan` and :func:`saliency_prune_plan`):

- *Allocation of growth*: layer l gets ``round(growth_rate * width_l * r_l)`` new filters,
  where ``r_l`` is its mean filter saliency over the width-weighted mean of all layers'
  (so the total is ``growth_rate`` of all filters, more where filters are more salient),
  capped at ``max_width`` x its dense width; what a cap cuts off is not redistributed.
  Within a layer the most salient filters are split first (cycling if it more than
  doubles).
- *Pruning* ranks raw saliencies of all layers together (they estimate the same quantity,
  a change of the loss), keeping at least ``layer_floor`` of each layer's grown width.
- Only epochs that end in a growth or prune step accumulate saliency (others do not need
  it). Its elementwise cost is not charged to the training FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from autoprune.methods.base import (
    ChannelParams,
    MethodParams,
    PruningMethod,
    bounded,
    register_method,
)
from autoprune.methods.timing import epoch_field
from autoprune.schedule import PruningSchedule
from autoprune.surgery import ChannelGroup
from autoprune.surgery.grow import check_growable
from autoprune.validation import ConfigError, check_range

if TYPE_CHECKING:
    from autoprune.engine.context import TrainContext


@dataclass(frozen=True)
class CGaPParams(ChannelParams):
    seed_width: float = bounded(0.5, 0.0, 1.0, low_open=True)
    """Fraction of every prunable layer's dense width the seed network starts with."""
    growth_interval: int = epoch_field(1, "every", within="growth_end_epoch")
    growth_rate: float = bounded(0.25, 0.0, 4.0)
    """New filters per growth step, as a fraction of the current width (on average)."""
    growth_end_epoch: int = epoch_field(0, "after")
    """Last epoch after which the network grows; 0 means a third of the epochs."""
    max_width: float = bounded(1.0, "seed_width", 8.0)
    """Cap of growth, as a fraction of the dense architecture's width."""
    prune_start_epoch: int = epoch_field(0, "after")
    """First prune step (after this epoch); 0 means the epoch after growth ends."""
    prune_end_epoch: int = epoch_field(0, "after")
    """Epoch at which ``prune_ratio`` is reached; 0 means two thirds of the epochs."""
    prune_ratio: float = bounded(0.5, 0.0, 0.99)
    """Fraction of the grown network's filters removed in all."""
    prune_frequency: int = epoch_field(1, "every")
    ramp: Literal["linear", "cubic"] = "linear"
    layer_floor: float = bounded(0.05, 0.0, 1.0)
    """Fraction of each layer's grown width pruning always keeps."""
    noise: float = bounded(0.1, 0.0, 1.0)
    """Relative scale of the zero-sum noise that makes split filters diverge."""

    def phases(self, epochs: int) -> tuple[int, int, int]:
        """Resolved ``(growth_end_epoch, prune_start_epoch, prune_end_epoch)``."""
        growth_end = self.growth_end_epoch or round(epochs / 3)
        prune_start = self.prune_start_epoch or growth_end + 1
        prune_end = self.prune_end_epoch or max(prune_start, round(2 * epochs / 3))
        return growth_end, prune_start, prune_end

    def resolve(self, epochs: int) -> CGaPParams:
        growth_end, prune_start, prune_end = self.phases(epochs)
        return dataclasses.replace(self, growth_end_epoch=growth_end,
                                   prune_start_epoch=prune_start, prune_end_epoch=prune_end)

    def check(self, epochs: int) -> None:
        """The phases in order: growth, then pruning, within the epochs."""
        growth_end, prune_start, prune_end = self.phases(epochs)
        if growth_end and self.growth_interval > growth_end:
            raise ConfigError(
                f"method_params.growth_interval ({self.growth_interval}) is longer than the "
                f"growth phase (growth_end_epoch = {growth_end}): the network would never grow"
            )
        if prune_start <= growth_end:
            raise ConfigError(
                f"method_params.prune_start_epoch ({prune_start}) must come after "
                f"growth_end_epoch ({growth_end}): pruning starts once growth has ended"
            )
        if prune_start > epochs:
            raise ConfigError(
                f"method_params.prune_start_epoch ({prune_start}) is after the last epoch "
                f"({epochs}); lower growth_end_epoch ({growth_end}) or prune_start_epoch"
            )
        check_range("method_params.prune_end_epoch", prune_end, prune_start, epochs)


def seed_plan(widths: Mapping[str, int], seed_width: float) -> dict[str, list[int]]:
    """Channels to remove so that each group keeps its first ``seed_width`` fraction."""
    keep = {k: max(1, round(seed_width * w)) for k, w in widths.items()}
    return {k: list(range(keep[k], w)) for k, w in widths.items() if keep[k] < w}


def growth_plan(
    saliency: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    caps: Mapping[str, int],
    rate: float,
) -> dict[str, list[int]]:
    """Source filters to split per group: ``round(rate * width * r)`` of them, where ``r``
    is the group's mean saliency relative to the width-weighted mean over groups, capped
    so no group exceeds ``caps``; the most salient filters first."""
    means = {k: float(saliency[k].mean()) for k in widths}
    average = sum(widths[k] * means[k] for k in widths) / max(sum(widths.values()), 1)
    plan = {}
    for key, width in widths.items():
        relative = means[key] / average if average > 0 else 1.0
        n = min(max(caps[key] - width, 0), round(rate * width * relative))
        if n > 0:
            order = torch.argsort(saliency[key], descending=True, stable=True).tolist()
            plan[key] = [order[i % width] for i in range(n)]
    return plan


def saliency_prune_plan(
    saliency: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    reference: Mapping[str, int],
    fraction: float,
    floor: float,
) -> dict[str, list[int]]:
    """Least salient filters (ranked over all groups) to remove so that ``1 - fraction``
    of the ``reference`` (grown) total is kept, each group keeping ``floor`` of its own."""
    n_keep = round(sum(reference.get(k, w) for k, w in widths.items()) * (1.0 - fraction))
    keep, candidates = {}, []
    for key, width in widths.items():
        keep[key] = min(width, max(1, math.ceil(floor * reference.get(key, width))))
        order = torch.argsort(saliency[key], descending=True, stable=True).tolist()
        candidates += [(float(saliency[key][i]), key) for i in order[keep[key]:]]
    candidates.sort(key=lambda c: c[0], reverse=True)
    for _, key in candidates[: max(n_keep - sum(keep.values()), 0)]:
        keep[key] += 1
    return {
        key: torch.argsort(saliency[key], stable=True)[: width - keep[key]].tolist()
        for key, width in widths.items() if keep[key] < width
    }


def filter_weights(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """Weights of the convolutions and linears whose output channels form the group."""
    layers = group.modules_of_type(model, nn.Conv2d) + group.modules_of_type(model, nn.Linear)
    return [layer.weight for layer in layers if isinstance(layer.weight, torch.Tensor)]


@register_method
class CGaP(PruningMethod):
    """Seed, grow the salient filters, prune the least salient ones."""

    name = "cgap"
    requires = ("prune", "grow")
    Params = CGaPParams
    params: CGaPParams

    def __init__(self, params: MethodParams) -> None:
        super().__init__(params)
        self.saliency: dict[str, torch.Tensor] = {}
        self.accumulating = False
        self.reference: dict[str, int] | None = None
        """Widths of the grown network, fixed at the first prune step."""
        self.growth_end = 0
        self.schedule: PruningSchedule | None = None
        self._weights: dict[str, list[torch.Tensor]] = {}
        """Per group, the filter weights whose saliency it sums (valid for one epoch)."""

    def setup(self, ctx: TrainContext) -> None:
        growth_end, prune_start, prune_end = self.params.phases(ctx.epochs)
        self.growth_end = growth_end
        self.schedule = PruningSchedule(prune_start, prune_end, self.params.prune_ratio,
                                        self.params.prune_frequency, self.params.ramp)
        if self.growth_end and self.params.growth_rate > 0:
            check_growable(ctx.model, ctx.index())  # before training: the user hears it now
        ctx.remove_channels(seed_plan(ctx.widths(), self.params.seed_width))

    def is_growth_epoch(self, epoch: int) -> bool:
        return epoch <= self.growth_end and epoch % self.params.growth_interval == 0

    def is_prune_epoch(self, epoch: int) -> bool:
        assert self.schedule is not None
        return self.schedule.is_step(epoch)

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        self.saliency = {}
        self.accumulating = self.is_growth_epoch(epoch) or self.is_prune_epoch(epoch)
        if self.accumulating:
            self._weights = {key: filter_weights(ctx.model, g) for key, g in ctx.groups().items()}

    def after_backward(self, ctx: TrainContext) -> None:
        if not self.accumulating:
            return
        with torch.no_grad():
            for key, weights in self._weights.items():
                for weight in weights:
                    if weight.grad is None:
                        continue
                    s = (weight * weight.grad).abs().reshape(weight.shape[0], -1).sum(1)
                    self.saliency[key] = self.saliency[key] + s if key in self.saliency else s

    def on_epoch_end(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        assert self.schedule is not None
        record: dict[str, Any] = {"phase": self.phase(epoch)}
        if self.is_growth_epoch(epoch):
            record["grown_channels"] = self.grow(ctx)
        if self.is_prune_epoch(epoch):
            record.update(self.prune(ctx, epoch))
        self.saliency, self._weights, self.accumulating = {}, {}, False
        record["widths"] = ctx.widths()
        return record

    def phase(self, epoch: int) -> str:
        assert self.schedule is not None
        if epoch <= self.growth_end:
            return "growth"
        return "prune" if self.schedule.start_epoch <= epoch <= self.schedule.end_epoch else "train"

    def scores(self, widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Accumulated saliency per group on the CPU (zeros where nothing was measured)."""
        return {
            k: self.saliency[k].float().cpu() if k in self.saliency else torch.zeros(w)
            for k, w in widths.items()
        }

    def grow(self, ctx: TrainContext) -> int:
        widths = ctx.widths()
        caps = {
            k: max(w, math.floor(self.params.max_width * ctx.dense_widths.get(k, w)))
            for k, w in widths.items()
        }
        plan = growth_plan(self.scores(widths), widths, caps, self.params.growth_rate)
        return ctx.grow_channels(plan, noise=self.params.noise)

    def prune(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        assert self.schedule is not None
        widths = ctx.widths()
        if self.reference is None:
            self.reference = dict(widths)
        fraction = self.schedule.fraction(epoch)
        plan = saliency_prune_plan(self.scores(widths), widths, self.reference, fraction,
                                   self.params.layer_floor)
        return {"pruned_fraction": fraction, "removed_channels": ctx.remove_channels(plan)}

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state.get("reference")
