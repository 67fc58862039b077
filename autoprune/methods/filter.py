"""Filter pruning while training (Roy et al., 2020, arXiv 2003.02800) and its baselines.

``filter``: train from scratch; from ``start_epoch`` on, every ``frequency`` epochs remove
the least important filters so that the pruned fraction follows ``ramp`` up to
``target_ratio``, reached at ``end_epoch``; train the smaller network to the end.

``prune_retrain``: the classical baseline: train dense, prune once to ``target_ratio``
with the same criterion, fine-tune for ``retrain_epochs``. The fine-tuning is *within* the
run's epoch budget (pruning happens after ``epochs - retrain_epochs`` epochs), so both
methods train for the same number of epochs.

``dense``: no pruning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from autoprune.methods._meter import ChannelMeter, post_relu
from autoprune.methods.base import (
    ChannelParams,
    MethodParams,
    PruningMethod,
    bounded,
    register_method,
)
from autoprune.methods.criteria import (
    global_plan,
    l1_importance,
    random_importance,
    uniform_plan,
)
from autoprune.methods.timing import epoch_field
from autoprune.schedule import PruningSchedule
from autoprune.validation import check_range

if TYPE_CHECKING:
    from autoprune.engine.context import TrainContext

Criterion = Literal["l1", "mean_activation", "random"]
Allocation = Literal["uniform", "global"]


@register_method
class Dense(PruningMethod):
    """The same architecture and recipe, nothing removed: the reference of every ratio."""

    name = "dense"
    requires = ()


@dataclass(frozen=True)
class FilterParams(ChannelParams):
    criterion: Criterion = "l1"
    target_ratio: float = bounded(0.5, 0.0, 0.99)
    start_epoch: int = epoch_field(1, "after")
    """First pruning step after this epoch (the epochs up to it train dense)."""
    end_epoch: int = epoch_field(0, "after")
    """``target_ratio`` is reached after this epoch; 0 means: half of the epochs."""
    frequency: int = epoch_field(1, "every")
    ramp: Literal["linear", "cubic"] = "linear"
    allocation: Allocation = "uniform"
    layer_floor: float = bounded(0.05, 0.0, 1.0)
    """With ``global`` allocation: fraction of each layer's dense width always kept."""
    activation_batches: int = bounded(10, 1, 1 << 20)
    """With ``mean_activation``: training batches measured before each pruning step."""

    def check(self, epochs: int) -> None:
        check_range("method_params.end_epoch", self.resolved_end(epochs), self.start_epoch, epochs)

    def resolved_end(self, epochs: int) -> int:
        return self.end_epoch or max(self.start_epoch, epochs // 2)

    def resolve(self, epochs: int) -> FilterParams:
        return dataclasses.replace(self, end_epoch=self.resolved_end(epochs))


class ScheduledFilterPruning(PruningMethod):
    """Shared machinery: a criterion, an allocation, and a PruningSchedule."""

    params: FilterParams

    def __init__(self, params: MethodParams) -> None:
        super().__init__(params)
        self.meter = ChannelMeter(self.params.activation_batches, post_relu)
        self.schedule: PruningSchedule | None = None

    def make_schedule(self, epochs: int) -> PruningSchedule:
        p = self.params
        return PruningSchedule(p.start_epoch, p.resolved_end(epochs), p.target_ratio,
                               p.frequency, p.ramp)

    def setup(self, ctx: TrainContext) -> None:
        self.schedule = self.make_schedule(ctx.epochs)

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        assert self.schedule is not None
        if self.params.criterion == "mean_activation" and self.schedule.is_step(epoch):
            self.meter.attach(ctx.model, ctx.groups(), ctx.replicas.reduce_sum)

    def on_epoch_end(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        assert self.schedule is not None
        if not self.schedule.is_step(epoch):
            return {"pruned_fraction": self.schedule.fraction(epoch)}
        fraction = self.schedule.fraction(epoch)
        scores = {key: self.importance(ctx, key) for key in ctx.groups()}
        self.meter.detach()
        widths = ctx.widths()
        if self.params.allocation == "uniform":
            plan = uniform_plan(scores, widths, ctx.dense_widths, fraction)
        else:
            plan = global_plan(scores, widths, ctx.dense_widths, fraction, self.params.layer_floor)
        removed = ctx.remove_channels(plan)
        return {"pruned_fraction": fraction, "removed_channels": removed, "widths": ctx.widths()}

    def importance(self, ctx: TrainContext, key: str) -> torch.Tensor:
        group = ctx.groups()[key]
        if self.params.criterion == "l1":
            return l1_importance(ctx.model, group)
        if self.params.criterion == "random":
            return random_importance(group)
        measured = self.meter.mean(key)
        return torch.zeros(group.width) if measured is None else measured


@register_method
class FilterPruning(ScheduledFilterPruning):
    name = "filter"
    Params = FilterParams


@dataclass(frozen=True)
class PruneRetrainParams(ChannelParams):
    criterion: Criterion = "l1"
    target_ratio: float = bounded(0.5, 0.0, 0.99)
    retrain_epochs: int = epoch_field(1, "before_end")
    """Fine-tuning epochs at the end of the budget (the dense phase gets the rest, at least
    one epoch)."""
    allocation: Allocation = "uniform"
    layer_floor: float = bounded(0.05, 0.0, 1.0)
    activation_batches: int = bounded(10, 1, 1 << 20)


@register_method
class PruneRetrain(ScheduledFilterPruning):
    """Train dense, prune once after ``epochs - retrain_epochs`` epochs, fine-tune."""

    name = "prune_retrain"
    Params = PruneRetrainParams

    def make_schedule(self, epochs: int) -> PruningSchedule:
        prune_at = epochs - self.params.retrain_epochs  # type: ignore[attr-defined]
        return PruningSchedule(prune_at, prune_at, self.params.target_ratio)
