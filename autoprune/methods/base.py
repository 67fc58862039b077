"""The PruningMethod interface and its registry.

A PruningMethod decides *what* to remove or grow. The engine calls its hooks at named
points of the training loop; a method changes the network only through the engine's
:class:`~autoprune.engine.context.TrainContext` (``ctx.remove_channels`` and friends), so
that compute is recounted and the optimiser's state carried after every change.

A new method is one module: a ``Params`` dataclass (its fields declare their ranges with
:func:`bounded` and their epoch meaning with :func:`~autoprune.methods.timing.epoch_field`),
a subclass of :class:`PruningMethod`, and ``@register_method``. The contract tests pick
it up from the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from autoprune.methods.timing import epoch_bounds, epoch_fields
from autoprune.validation import check_choice, check_range, from_mapping

if TYPE_CHECKING:
    from autoprune.engine.context import TrainContext


_RANGE = "autoprune.range"


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric parameter; a bound may name another field."""

    low: float | str
    high: float | str
    low_open: bool = False


def bounded(default: Any, low: float | str, high: float | str, *, low_open: bool = False) -> Any:
    """A dataclass field whose value must lie in ``[low, high]`` (``(low, high]`` with
    ``low_open``); ``low`` or ``high`` may be the name of another field of the same
    dataclass (``max_width`` at least ``seed_width``). Checked by
    :meth:`MethodParams.validate`, so a method's ``Params`` declares its ranges and writes
    no checking code; epoch-valued fields (:func:`~autoprune.methods.timing.epoch_field`)
    get their ranges from the epoch budget."""
    return dataclasses.field(default=default, metadata={_RANGE: Range(low, high, low_open)})


@dataclass(frozen=True)
class MethodParams:
    """Base of every method's parameters. ``validate`` raises ConfigError naming the key."""

    def validate(self, epochs: int) -> None:
        """Check every declared range (:func:`bounded`, :func:`epoch_field`), then
        :meth:`check`."""
        specs = epoch_fields(type(self))
        for f in dataclasses.fields(self):
            value, key = getattr(self, f.name), f"method_params.{f.name}"
            if _RANGE in f.metadata:
                r: Range = f.metadata[_RANGE]
                low = getattr(self, r.low) if isinstance(r.low, str) else r.low
                high = getattr(self, r.high) if isinstance(r.high, str) else r.high
                check_range(key, value, low, high, low_open=r.low_open)
            elif f.name in specs:
                check_range(key, value, *epoch_bounds(specs[f.name], f.default, epochs))
        self.check(epochs)

    def check(self, epochs: int) -> None:
        """Constraints between fields and with the epochs that no single range states."""

    def resolve(self, epochs: int) -> MethodParams:
        """The same parameters with automatic values (0 = derived from ``epochs``) made
        explicit; fields declared with :func:`~autoprune.methods.timing.epoch_field`
        are then rescaled to another budget by :func:`~autoprune.methods.timing.rescale`."""
        return self


@dataclass(frozen=True)
class ChannelParams(MethodParams):
    """Base of the parameters of every method that removes channels."""

    round_to: int = bounded(1, 1, 1024)
    """Keep each pruned group's width a multiple of this: the engine rounds the kept width
    *up* (fewer channels removed, never more), sparing the requested channels of largest
    L1 norm. 8 or 16 suit hardware that computes channels in blocks; 1 = as planned."""


class PruningMethod:
    """Base class: every hook is optional; the default does nothing (= dense training)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    requires: ClassVar[tuple[str, ...]] = ("prune",)
    """Structural changes the method makes (of ``ModelInfo.supports``): a config pairing it
    with a model that does not allow them is refused, and the engine checks the network
    itself before the first epoch."""

    def __init__(self, params: MethodParams) -> None:
        self.params = params

    @classmethod
    def parse_params(cls, data: Mapping[str, Any], epochs: int) -> MethodParams:
        params = from_mapping(cls.Params, dict(data or {}), "method_params")
        params.validate(epochs)
        return params

    # --- hooks, in the order the engine calls them ------------------------------------

    def setup(self, ctx: TrainContext) -> None:
        """Before the first epoch (and again on resume, before state is restored):
        shrink to a seed, attach gates or factors."""

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        """Before training epoch ``epoch`` (1-based), e.g. to attach measurement hooks."""

    def loss_term(self, ctx: TrainContext) -> torch.Tensor | None:
        """Extra loss for this step (regularisers, budget losses), added to the task loss."""
        return None

    def after_backward(self, ctx: TrainContext) -> None:
        """After ``loss.backward()``, before the optimiser step (e.g. accumulate saliency)."""

    def after_step(self, ctx: TrainContext) -> None:
        """After the optimiser step (e.g. project gate parameters back to their range)."""

    def on_epoch_end(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        """After epoch ``epoch`` (1-based) of training: prune or grow through ``ctx``.
        Returns what happened, merged into the epoch's record in ``summary.json``."""
        return {}

    def on_train_end(self, ctx: TrainContext) -> dict[str, Any]:
        """After the last epoch: final cut, removal of any gate left."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Plain data (tensors, numbers, strings, lists, dicts) to resume from a checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called after :meth:`setup`)."""


_METHODS: dict[str, type[PruningMethod]] = {}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: make a PruningMethod available by its ``name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[PruningMethod]:
    check_choice("method", name, list_methods())
    return _METHODS[name]


def create_method(name: str, params: Mapping[str, Any], epochs: int) -> PruningMethod:
    cls = get_method(name)
    return cls(cls.parse_params(params, epochs))


def params_dict(params: MethodParams) -> dict[str, Any]:
    return dataclasses.asdict(params)
