"""What a PruningMethod sees of a training run, and the only way it changes the network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from autoprune.compute import StepCost, count_macs_params, measure_step_cost
from autoprune.engine.hardware import apply_memory_format
from autoprune.engine.parallel import Replicas
from autoprune.surgery import (
    ChannelGroup,
    DependencyIndex,
    ParamRemap,
    UnprunableModelError,
    remove_channels,
    removed_identity,
)
from autoprune.surgery.grow import grow_channels


class TrainContext:
    """The state of one training run shared between the engine and its PruningMethod.

    Every structural change goes through :meth:`remove_channels`,
    :meth:`remove_module` or :meth:`structure_changed`, which keep the dependency graph,
    the optimiser and the compute counts in step with the network.
    """

    def __init__(
        self,
        model: nn.Module,
        example_batch: tuple[torch.Tensor, torch.Tensor],
        train_data: Any,
        epochs: int,
        device: torch.device,
        replicas: Replicas | None = None,
    ) -> None:
        self.model = model
        self.replicas = replicas or Replicas()
        """The data-parallel workers of this run (one, by default): a training step runs
        through :meth:`Replicas.wrap`, and every change is checked to be the same on all."""
        self.example_batch = example_batch
        self.example_input = example_batch[0][:1]
        self.train_data = train_data
        self.epochs = epochs
        self.device = device
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = 0
        """Epoch being trained (1-based); in ``on_epoch_end`` the epoch just completed."""
        self.step = 0
        self.loss: torch.Tensor | None = None
        """The task loss of the current step (after the forward pass)."""
        self.extra_flops = 0.0
        self.macs = self.params = 0
        self.cost = StepCost(0.0, 0.0)
        self._index: DependencyIndex | None = None
        self._unprunable: UnprunableModelError | None = None
        self.changed = False
        """Set by every structural change; the engine clears it after recalibrating."""
        self.round_to = 1
        """Pruned widths are kept multiples of this (the method's ``round_to``)."""
        self.memory_format = torch.contiguous_format
        """Layout of the conv weights, re-applied after every structural change."""
        self.autocast_dtype: torch.dtype | None = None
        """Autocast dtype of the training steps (None: float32)."""
        self.compile = False
        """Train through ``torch.compile`` (``training.compile``), compiled afresh after
        every structural change."""
        self._compiled: Any = None
        self._step_module: nn.Module | None = None
        """What a training step runs through (the network, or its DDP wrapper)."""
        self.compiled_steps = 0
        """Training steps that ran compiled (the others ran eagerly)."""
        self.recount()
        try:
            self.dense_widths: dict[str, int] = self.widths()
            """Channel-group widths of the full architecture, before any method touched it."""
        except UnprunableModelError as error:  # fine for dense training; raised on use
            self._unprunable, self.dense_widths = error, {}

    # --- reading the network -----------------------------------------------------------

    @property
    def prunable(self) -> bool:
        """Whether the network's channels can be followed (else only dense training)."""
        return self._unprunable is None

    def index(self) -> DependencyIndex:
        """Dependency graph and channel groups of the current network (cached)."""
        if self._unprunable is not None:
            raise self._unprunable
        if self._index is None:
            self._index = DependencyIndex(self.model, self.example_input)
        return self._index

    def groups(self) -> dict[str, ChannelGroup]:
        return self.index().groups

    def widths(self) -> dict[str, int]:
        return {k: g.width for k, g in self.groups().items()}

    # --- changing the network ----------------------------------------------------------

    def remove_channels(self, plan: Mapping[str, Sequence[int]]) -> int:
        """Physically remove channels (group key -> channel indices); returns the count.
        With ``round_to`` > 1 the kept widths are rounded up to its multiples first."""
        plan = self.executable_plan(plan)
        self.replicas.agree("remove_channels", plan)
        if not plan:
            return 0
        removed = remove_channels(
            self.model, plan, self.example_input, self.optimizer, self.index()
        )
        self.structure_changed()
        return removed

    def executable_plan(self, plan: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        """The channels :meth:`remove_channels` will really remove for ``plan``: kept
        widths rounded up to multiples of ``round_to``, and grouped-convolution groups
        conformed (:meth:`DependencyIndex.conform`). A method that keeps per-channel state
        (gates, factors) resizes it from this, not from its own plan."""
        plan = {k: list(v) for k, v in plan.items() if len(v)}
        if not plan:
            return {}
        index = self.index()
        if self.round_to > 1:
            plan = index.round_plan(plan, self.round_to)
        return {k: c for k, c in ((k, index.conform(k, v)) for k, v in plan.items()) if c}

    def grow_channels(self, plan: Mapping[str, Sequence[int]], noise: float = 0.0) -> int:
        """Physically split channels (group key -> source channel indices, one copy each),
        keeping the network's function; returns the number of channels added."""
        plan = {k: list(v) for k, v in plan.items() if len(v)}
        self.replicas.agree("grow_channels", plan)
        if not plan:
            return 0
        grown = grow_channels(self.model, self.index(), plan, self.optimizer, noise=noise)
        self.structure_changed()
        return grown

    def remove_module(self, name: str) -> None:
        """Replace a residual branch by the identity (its parameters leave the optimiser)."""
        self.replicas.agree("remove_module", name)
        remap = ParamRemap(self.model)
        self.model.set_submodule(name, removed_identity())
        remap.rebind(self.optimizer)
        self.structure_changed()

    def structure_changed(self) -> None:
        """Call after changing the network by other means (e.g. growth, gates removed)."""
        self._index = None
        self._compiled = None
        self._step_module = None  # DDP wraps the new parameters at the next step
        self.changed = True
        apply_memory_format(self.model, self.memory_format)
        self.recount()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training step's forward pass: the network itself, or with ``compile`` its
        compiled form. After a structural change the old compiled code is dropped and the
        network compiled again for its new shapes (dynamo would otherwise recompile on
        each change until its recompile limit, then fall back to eager silently). While
        a method has hooks on the network (an activation meter measuring), steps run
        eagerly: each hook added or removed would cost a recompile."""
        if self._step_module is None:
            self._step_module = self.replicas.wrap(self.model)
        if not self.compile or any(m._forward_hooks or m._forward_pre_hooks
                                   for m in self.model.modules()):
            return self._step_module(x)
        if self._compiled is None:
            torch._dynamo.reset()
            self._compiled = torch.compile(self._step_module)
        self.compiled_steps += 1
        return self._compiled(x)

    def recount(self) -> None:
        """Recount inference MACs/params and the FLOPs of a training step."""
        self.macs, self.params = count_macs_params(self.model, self.example_input)
        x, y = self.example_batch
        self.cost = measure_step_cost(self.model, x, y)

    # --- accounting ----------------------------------------------------------------

    @torch.no_grad()
    def recalibrate_batchnorm(self, max_batches: int) -> None:
        """Re-estimate batch-norm running statistics after a structural change.

        Removing or splitting channels changes what downstream batch norms see, so their
        running statistics go stale and eval-mode accuracy drops to near chance until
        training refreshes them. A few forward passes over training batches (charged as
        extra compute) give evaluation the statistics of the network as it now is.
        """
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or max_batches <= 0:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        was_training = self.model.training
        self.model.train()
        for i, (x, _) in enumerate(self.train_data):
            if i >= max_batches:
                break
            self.model(x)
            self.count_extra_forward(x.shape[0])
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.model.train(was_training)

    def count_extra_forward(self, num_samples: int) -> None:
        """Charge forward passes a method makes outside training steps (measurement); on N
        workers each makes the same passes on its own data, so N times as many."""
        self.extra_flops += self.cost.forward * num_samples * self.replicas.world
