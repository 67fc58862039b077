"""Complexity-aware unit and layer pruning with variational Bernoulli gates.

Paper: Guenter & Sideris, "Complexity-Aware Training of Deep Neural Networks for Optimal
Structure Discovery" (arXiv 2411.09127), building on "Concurrent Training and Layer Pruning
of Deep Neural Networks" (arXiv 2406.04549). METHODS.md, section 3.

Formulation. A gate ``z ~ Bernoulli(theta)`` scales every channel of every prunable channel
group (on the output of the group's batch norms, or of its layers if it has none) and every
residual branch whose shortcut is the identity (on the branch's last layer, before the
addition). Weights and thetas are trained together on

    loss = CE + strength * [(1 - layer_vs_unit) * C_unit + layer_vs_unit * C_layer]

where C is the expected cost of the network under the gates, normalised by the dense
network's counted cost, with cost = compute_vs_params * MACs + (1 - compute_vs_params) *
params. The expectation comes from :mod:`autoprune.methods._costmodel`: with independent
gates the expected width of group g is ``sum(theta_g)`` (a fixed gate counts 1), and every
layer costs ``E[branch gate] * (c_io * r_in * r_out + c_o * r_out)`` with its real
per-channel MACs/params ``c`` measured on the network (``r`` = expected width / width). So a
channel's price is its exact marginal cost: its share of the layers that produce it *and* of
the layers that consume it, at the consumers' expected widths; a branch's price is its
expected cost. Nothing is hand-set.

Choices left open (the method section was not available to us in full):

- ``C_unit`` and ``C_layer`` are the *same* expected cost, differentiated through the unit
  gates only, respectively the layer gates only: ``layer_vs_unit`` decides which kind of
  gate pays for the network's cost (0: channels only, 1: residual branches only).
- Gradient estimator (``estimator``, see :mod:`autoprune.methods._bernoulli`):
  ``straight_through`` (forward an exact Bernoulli sample, backward d z / d theta = 1) or
  ``concrete`` (binary concrete relaxation with ``temperature``). One sample per gate and
  mini-batch; at evaluation ``z = [theta >= 0.5]``, the network :meth:`on_train_end` keeps.
- Thetas start at ``init_theta``, have their own optimiser group without weight decay and
  are projected to [0, 1] after every step. Their lr is the network's lr x
  ``theta_lr_scale`` / (batches per epoch), so that gates move as far per epoch whatever
  the dataset and batch size (decisions are taken per epoch). A channel's share of the cost
  and its effect on the loss both shrink like 1 / width, so the gradient of a group's unit
  thetas is multiplied by the group's width (a diagonal preconditioner: stationary points
  are unchanged, a 512-wide layer's gates move as fast as a 16-wide layer's).
- ``strength`` 0 is the dense baseline: with no price on complexity nothing is gated. (With
  gates but no price, the straight-through estimator still lets gates that the loss does not
  defend drift shut, which would prune "for free".)
- ``start_epoch``: the epochs before it train the dense network (gates at 1, thetas idle).
  From its end on, after each epoch: theta < ``prune_threshold`` removes the structure
  (channels cut, a branch replaced by the identity); no group goes below its floor
  (``min_width`` of its dense width, at least one channel; the strongest channels stay,
  their gates fixed at 1);
  theta > 1 - ``prune_threshold`` fixes the gate at 1 (it no longer samples; a group or
  branch whose gates are all fixed loses them). At the end, every structure with
  theta < 0.5 is removed (again down to the floor at most) and all gates go: the result is
  a plain deterministic network. Evaluation while training sees that same network: a group
  whose gates all sit below 0.5 (say in (prune_threshold, 0.5), still sampled in training)
  shows its floor's strongest channels, not a zeroed group.
- While training, the gates' own parameters (one per channel and branch) are part of the
  counted ``params``; they disappear with the gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from autoprune.methods._bernoulli import FIXED, LAYER, UNIT, BernoulliGates
from autoprune.methods._branches import branch_tails, identity_blocks
from autoprune.methods._costmodel import CostModel, build_cost_model
from autoprune.methods._gates import (
    GateHooks,
    attach_bank,
    detach_bank,
    drop_entries,
    ensure_in_optimizer,
    gated_modules,
    resize_entries,
    split_param_groups,
)
from autoprune.methods.base import (
    ChannelParams,
    MethodParams,
    PruningMethod,
    bounded,
    register_method,
)
from autoprune.methods.timing import epoch_field
from autoprune.validation import ConfigError

if TYPE_CHECKING:
    from autoprune.engine.context import TrainContext


@dataclass(frozen=True)
class VariationalParams(ChannelParams):
    strength: float = bounded(1.0, 0.0, 1e6)
    """Trade-off between accuracy and pruning (0: no complexity pressure)."""
    layer_vs_unit: float = bounded(0.5, 0.0, 1.0)
    """0: only channels pay for the cost; 1: only residual branches do."""
    compute_vs_params: float = bounded(0.5, 0.0, 1.0)
    """Weight of MACs (1) versus parameters (0) in the cost."""
    prune_threshold: float = bounded(0.05, 0.0, 0.5, low_open=True)
    """In (0, 0.5)."""
    init_theta: float = bounded(1.0, 0.5, 1.0)
    theta_lr_scale: float = bounded(5.0, 0.0, 1e6, low_open=True)
    """Thetas' lr = the network's lr x theta_lr_scale / (batches per epoch)."""
    estimator: Literal["straight_through", "concrete"] = "straight_through"
    temperature: float = bounded(0.5, 0.0, 100.0, low_open=True)
    """Of the concrete relaxation."""
    min_width: float = bounded(0.1, 0.0, 1.0)
    """Floor of every channel group, residual streams included: no removal takes a group
    below this fraction of its dense width (rounded up, at least one channel). The channels
    that hold a group at its floor have their gates fixed at 1."""
    start_epoch: int = epoch_field(1, "from")
    """Gates act from this epoch on (before it: dense warm-up, every gate 1, thetas idle);
    structures are removed or fixed at the end of this epoch and later ones."""

    def check(self, epochs: int) -> None:
        if self.prune_threshold >= 0.5:
            raise ConfigError(
                f"method_params.prune_threshold must be in (0, 0.5), got {self.prune_threshold}"
            )


@register_method
class Variational(PruningMethod):
    name = "variational"
    Params = VariationalParams
    params: VariationalParams

    def __init__(self, params: MethodParams) -> None:
        super().__init__(params)
        self.bank: BernoulliGates | None = None
        self.hooks = GateHooks()
        self.cost: CostModel | None = None
        self.dense = (1.0, 1.0)
        self.steps_per_epoch = 1
        self.stale = True

    # --- set-up and wiring ------------------------------------------------------------

    def setup(self, ctx: TrainContext) -> None:
        p = self.params
        self.dense = (float(ctx.macs), float(ctx.params))
        batches = len(ctx.train_data) if hasattr(ctx.train_data, "__len__") else 1
        self.steps_per_epoch = max(1, batches)
        if p.strength == 0:
            return  # no price on complexity: the dense baseline, nothing is gated
        bank = BernoulliGates(p.estimator, p.temperature, torch.initial_seed() + 1)
        for key, group in ctx.groups().items():
            bank.put(UNIT, key, torch.full((group.width,), p.init_theta))
            bank.put(FIXED, key, torch.zeros(group.width))
        for block in identity_blocks(ctx.model):
            bank.put(LAYER, block, torch.full((1,), p.init_theta))
        self.bank = attach_bank(ctx.model, bank)
        self._rewire(ctx)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Thetas get their own lr (per epoch, see ``theta_lr_scale``), no weight decay."""
        if self.bank is None:
            return None
        scale = self.params.theta_lr_scale / self.steps_per_epoch
        return split_param_groups(model, self.bank, lr_scale=scale, weight_decay=0.0)

    def _rewire(self, ctx: TrainContext) -> None:
        """Rebuild what depends on the architecture: the cost model and the gate hooks."""
        bank = self._bank()
        self.hooks.remove()
        blocks = identity_blocks(ctx.model)
        self.cost = build_cost_model(ctx.model, ctx.index(), (ctx.macs, ctx.params), blocks)
        targets = [
            (name, UNIT, key)
            for key, group in ctx.groups().items() if bank.get(UNIT, key) is not None
            for name in gated_modules(ctx.model, group)
        ]
        gated = [b for b in blocks if bank.get(LAYER, b) is not None]
        tails = branch_tails(ctx.model, ctx.example_input, gated)
        targets += [(tail, LAYER, block) for block, tail in tails.items()]
        self.hooks.attach(ctx.model, bank, targets)
        bank.floors = {k: self._floor(ctx, k) for k in bank.keys(UNIT)}
        self.stale = False

    def _floor(self, ctx: TrainContext, key: str) -> int:
        """Channels group ``key`` keeps at least: ``min_width`` of its dense width."""
        dense = ctx.dense_widths.get(key) or ctx.groups()[key].width
        return max(1, math.ceil(self.params.min_width * dense - 1e-9))

    def _bank(self) -> BernoulliGates:
        assert self.bank is not None, "variational: setup() was not called"
        return self.bank

    # --- training ---------------------------------------------------------------------

    def on_epoch_start(self, ctx: TrainContext, epoch: int) -> None:
        if self.bank is None:
            return
        if self.stale:
            self._rewire(ctx)
        self._bank().active = epoch >= self.params.start_epoch

    def loss_term(self, ctx: TrainContext) -> torch.Tensor | None:
        p = self.params
        if self.bank is None or not self.bank.active:
            return None
        if self.stale:
            self._rewire(ctx)
        return p.strength * self.expected_cost(1 - p.layer_vs_unit, p.layer_vs_unit)

    def expected_cost(self, unit_share: float = 1.0, layer_share: float = 1.0) -> torch.Tensor:
        """Normalised expected cost; its gradient reaches unit thetas scaled by
        ``unit_share`` and branch thetas by ``layer_share`` (the value is the same)."""
        bank, cost = self._bank(), self.cost
        assert cost is not None
        ratios = {
            k: _grad_scale(bank.probabilities(UNIT, k).mean(), unit_share)  # type: ignore[union-attr]
            for k in bank.keys(UNIT)
        }
        branches = {b: _grad_scale(t.reshape(()), layer_share) for b, t in bank.items(LAYER)}
        macs, params = cost.evaluate(ratios, branches)
        w = self.params.compute_vs_params
        return w * macs / self.dense[0] + (1 - w) * params / self.dense[1]

    def after_backward(self, ctx: TrainContext) -> None:
        """Step a group's unit thetas in units of the group: both a channel's share of the
        cost and its effect on the loss scale like 1 / width, so the gradient is multiplied
        by the width (stationary points unchanged; wide and narrow groups move alike)."""
        for _, theta in self.bank.items(UNIT) if self.bank is not None else ():
            if theta.grad is not None:
                theta.grad.mul_(theta.numel())

    def after_step(self, ctx: TrainContext) -> None:
        bank = self.bank
        if bank is None:
            return
        bank.new_forward()
        with torch.no_grad():
            for key, theta in bank.items(UNIT):
                fixed = bank.get(FIXED, key)
                theta.clamp_(0.0, 1.0)
                if fixed is not None:
                    theta.masked_fill_(fixed > 0, 1.0)
            for _, theta in bank.items(LAYER):
                theta.clamp_(0.0, 1.0)

    # --- structural decisions -----------------------------------------------------------

    def on_epoch_end(self, ctx: TrainContext, epoch: int) -> dict[str, Any]:
        p = self.params
        event: dict[str, Any] = {}
        if self.bank is None:
            return {"widths": ctx.widths()}
        if epoch >= p.start_epoch:
            self.hooks.remove()
            blocks = self._remove_branches(ctx, p.prune_threshold)
            channels = self._remove_units(ctx, p.prune_threshold)
            fixed_units, fixed_layers = self._fix(ctx, 1 - p.prune_threshold)
            self._rewire(ctx)
            event = {
                "removed_blocks": blocks, "removed_channels": channels,
                "unit_gates_closed": channels, "layer_gates_closed": len(blocks),
                "unit_gates_newly_fixed": fixed_units, "layer_gates_newly_fixed": fixed_layers,
            }
        return {**event, **self._census(ctx)}

    def on_train_end(self, ctx: TrainContext) -> dict[str, Any]:
        """The deterministic network: structures with theta < 0.5 go, then all gates."""
        if self.bank is None:
            return {}
        self.hooks.remove()
        blocks = self._remove_branches(ctx, 0.5)
        channels = self._remove_units(ctx, 0.5)
        detach_bank(ctx.model, ctx.optimizer)
        self.bank, self.cost = None, None
        ctx.structure_changed()
        return {
            "removed_blocks": blocks, "removed_channels": channels,
            "blocks_remaining": len(identity_blocks(ctx.model)), "widths": ctx.widths(),
        }

    def _remove_branches(self, ctx: TrainContext, below: float) -> list[str]:
        bank = self._bank()
        doomed = [b for b, theta in bank.items(LAYER) if float(theta.detach()) < below]
        if not doomed:
            return []
        before = {k: set(g.out_modules) for k, g in ctx.groups().items()}
        for block in doomed:
            bank.drop(LAYER, block)
            ctx.remove_module(block)
        self._follow_groups(ctx, before)
        return doomed

    def _follow_groups(self, ctx: TrainContext, before: dict[str, set[str]]) -> None:
        """After branches went, a group may be keyed by another root (its old root was in
        a removed branch): its gates move to the new key; gates of vanished groups go."""
        bank, groups = self._bank(), ctx.groups()
        free = [k for k in groups if bank.get(UNIT, k) is None]
        gone = []
        for old in [k for k in bank.keys(UNIT) if k not in groups]:
            width = bank.get(UNIT, old).numel()  # type: ignore[union-attr]
            match = next((k for k in free if groups[k].width == width
                          and before.get(old, set()) & set(groups[k].out_modules)), None)
            if match is None:
                gone += [(UNIT, old), (FIXED, old)]
                continue
            free.remove(match)
            for kind in (UNIT, FIXED):
                value = bank.get(kind, old)
                bank.drop(kind, old)
                bank.put(kind, match, value)  # type: ignore[arg-type]
        drop_entries(ctx.model, ctx.optimizer, bank, gone)
        ensure_in_optimizer(ctx.optimizer, bank)

    def _remove_units(self, ctx: TrainContext, below: float) -> int:
        bank = self._bank()
        plan: dict[str, list[int]] = {}
        keep: dict[tuple[str, str], torch.Tensor] = {}
        for key, theta in bank.items(UNIT):
            fixed = bank.get(FIXED, key)
            assert fixed is not None
            drop = (theta.detach() < below) & (fixed <= 0)
            short = self._floor(ctx, key) - (theta.numel() - int(drop.sum()))
            if short > 0:  # the group stays at its floor, with the strongest of the doomed
                score = torch.where(drop, theta.detach(), torch.full_like(theta, -1.0))
                spared = score.topk(short).indices  # channels, on for good: else evaluation
                drop[spared] = False  # (z = [theta >= 0.5]) would see another network
                with torch.no_grad():
                    theta[spared], fixed[spared] = 1.0, 1.0
            if bool(drop.any()):
                plan[key] = drop.nonzero().flatten().tolist()
        plan = ctx.executable_plan(plan)  # round_to and grouped convs may spare some
        if not plan:
            return 0
        for key, idxs in plan.items():
            mask = torch.ones(ctx.groups()[key].width, dtype=torch.bool)
            mask[idxs] = False
            keep[(UNIT, key)] = keep[(FIXED, key)] = mask.nonzero().flatten()
        resize_entries(ctx.model, ctx.optimizer, bank, keep)
        return ctx.remove_channels(plan)

    def _fix(self, ctx: TrainContext, above: float) -> tuple[int, int]:
        """Gates with theta > ``above`` are fixed at 1; fully fixed structures lose them."""
        bank = self._bank()
        units, done = 0, []
        with torch.no_grad():
            for key, theta in bank.items(UNIT):
                fixed = bank.get(FIXED, key)
                assert fixed is not None
                new = (theta > above) & (fixed <= 0)
                units += int(new.sum())
                fixed[new], theta[new] = 1.0, 1.0
                if bool((fixed > 0).all()):
                    done += [(UNIT, key), (FIXED, key)]
        layers = [(LAYER, b) for b, theta in bank.items(LAYER) if float(theta.detach()) > above]
        drop_entries(ctx.model, ctx.optimizer, bank, done + layers)
        return units, len(layers)

    def _census(self, ctx: TrainContext) -> dict[str, Any]:
        bank = self._bank()
        widths = ctx.widths()
        open_units = sum(int((f <= 0).sum()) for _, f in bank.items(FIXED))
        blocks = identity_blocks(ctx.model)
        with torch.no_grad():
            cost = float(self.expected_cost())
        return {
            "unit_gates_open": open_units, "unit_gates_fixed": sum(widths.values()) - open_units,
            "layer_gates_open": len(bank.keys(LAYER)),
            "layer_gates_fixed": len(blocks) - len(bank.keys(LAYER)),
            "blocks_remaining": len(blocks), "expected_cost": cost, "widths": widths,
        }

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.bank is None:
            return {"generator": None}
        gen = self.bank.generator
        return {"generator": gen.get_state() if gen is not None else self.bank.generator_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.bank is not None and state.get("generator") is not None:
            self.bank.generator = None
            self.bank.generator_state = state["generator"]
        self.stale = True  # the architecture was restored: rebuild cost model and hooks


def _grad_scale(x: torch.Tensor, share: float) -> torch.Tensor:
    """``x`` in value; its gradient scaled by ``share``."""
    return x * share + x.detach() * (1.0 - share)
