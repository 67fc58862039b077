"""Inference MACs and parameters as a (differentiable) function of channel-group widths.

Shared by ``variational`` and ``hfp``. One forward pass of the example input, with hooks on
every leaf module, measures each call's real spatial sizes; Torch-Pruning's dependency
groups say which channel group feeds and which one is produced by each layer. Every
counted quantity then scales with the *ratios* ``r_g = width'_g / width_g`` of the groups:

- a convolution or linear layer's weights (MACs and parameters) scale with
  ``r_in * r_out`` (bilinear: its input channels come from one group, its output channels
  belong to another; the network input and the logits are fixed, ratio 1), its bias with
  ``r_out``; a depthwise convolution scales with ``r_out`` only;
- batch norms, activations and pools scale with the ratio of the group their tensor
  carries (found by following tensors through the traced forward pass);
- whatever else Torch-Pruning counts is a constant.

The formulas are Torch-Pruning's own (``count_ops_and_params``), so with integer widths the
estimate equals :func:`autoprune.compute.count_macs_params` of the pruned network (the
tests check this); with soft or expected widths it is the smooth surrogate both methods
differentiate. Modules inside an identity residual branch can be scaled by a branch gate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn

from autoprune.surgery import DependencyIndex
from autoprune.surgery.trace import is_leaf, trace_calls

_ACTS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
Key = tuple[tuple[str, ...], str | None, str | None]
"""(input groups, output group, residual branch) of a cost term."""


@dataclass
class Coeffs:
    """MACs/params of one (input groups, output group, branch) combination at ratio 1."""

    macs_io: float = 0.0
    params_io: float = 0.0
    macs_o: float = 0.0
    params_o: float = 0.0


class CostModel:
    """``evaluate(ratios, branch_gates)`` -> (MACs, params) of the network, in the same units as
    ``count_macs_params``; ``ratios`` maps group key -> width ratio (missing keys: 1)."""

    def __init__(
        self, terms: dict[Key, Coeffs], widths: dict[str, int], const_macs: float,
        const_params: float,
    ) -> None:
        self.terms = terms
        self.widths = widths
        self.const_macs = const_macs
        self.const_params = const_params

    def evaluate(
        self, ratios: Mapping[str, Any], branches: Mapping[str, Any] | None = None
    ) -> tuple[Any, Any]:
        macs: Any = self.const_macs
        params: Any = self.const_params
        for (in_keys, out_key, branch), c in self.terms.items():
            r_out = ratios.get(out_key, 1.0) if out_key is not None else 1.0
            r_in = self._input_ratio(in_keys, ratios)
            gate = branches.get(branch, 1.0) if branches and branch is not None else 1.0
            macs = macs + gate * r_out * (c.macs_io * r_in + c.macs_o)
            params = params + gate * r_out * (c.params_io * r_in + c.params_o)
        return macs, params

    def _input_ratio(self, in_keys: tuple[str, ...], ratios: Mapping[str, Any]) -> Any:
        if not in_keys:
            return 1.0
        if len(in_keys) == 1:
            return ratios.get(in_keys[0], 1.0)
        total = sum(self.widths[k] for k in in_keys)  # a concatenation of groups
        return sum(self.widths[k] * ratios.get(k, 1.0) for k in in_keys) / total

    def at_widths(self, widths: Mapping[str, int]) -> tuple[float, float]:
        """Exact MACs and parameters after resizing the groups to integer ``widths``."""
        ratios = {k: widths[k] / w for k, w in self.widths.items() if k in widths}
        macs, params = self.evaluate(ratios)
        return float(macs), float(params)

    def per_channel_macs(self) -> dict[str, float]:
        """Marginal MACs of one channel of each group at the current widths (for records)."""
        out: dict[str, float] = defaultdict(float)
        for (in_keys, out_key, _), c in self.terms.items():
            if out_key is not None:
                out[out_key] += (c.macs_io + c.macs_o) / self.widths[out_key]
            for k in in_keys:
                out[k] += c.macs_io / sum(self.widths[i] for i in in_keys)
        return dict(out)


def build_cost_model(
    model: nn.Module, index: DependencyIndex, totals: tuple[float, float],
    branches: Sequence[str] = (),
) -> CostModel:
    """Trace ``model`` once and return its :class:`CostModel`.

    ``totals`` are the current counted (MACs, params): whatever the model does not explain
    stays a constant. ``branches`` are names of gated residual branches (variational).
    """
    out_of, in_of = group_roles(model, index)
    terms: dict[Key, Coeffs] = defaultdict(Coeffs)
    seen_params: set[str] = set()
    macs_sum = params_sum = 0.0
    for name, module, key, x, y in _trace(model, index.example_input, out_of):
        branch = _branch_of(name, branches)
        first = name not in seen_params
        seen_params.add(name)
        for term_key, c in _call_terms(module, key, in_of.get(name, ()), x, y, first):
            full = terms[(term_key[0], term_key[1], branch)]
            for field in ("macs_io", "params_io", "macs_o", "params_o"):
                setattr(full, field, getattr(full, field) + getattr(c, field))
            macs_sum += c.macs_io + c.macs_o
            params_sum += c.params_io + c.params_o
    widths = {k: g.width for k, g in index.groups.items()}
    return CostModel(dict(terms), widths, totals[0] - macs_sum, totals[1] - params_sum)


def group_roles(
    model: nn.Module, index: DependencyIndex
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Module name -> the group its output channels belong to, and conv/linear name ->
    the groups feeding its input channels."""
    names = {m: n for n, m in model.named_modules()}
    out_of: dict[str, str] = {}
    in_of: dict[str, list[str]] = defaultdict(list)
    graph = index.graph
    for key, group in index.groups.items():
        for name in group.out_modules:
            out_of.setdefault(name, key)
        for dep, _ in group.group:
            module = dep.target.module
            consumer = names.get(module)
            if consumer is None or not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            consumes = graph.is_in_channel_pruning_fn(dep.handler)
            if consumes and not graph.is_out_channel_pruning_fn(dep.handler) and (
                key not in in_of[consumer]
            ):
                in_of[consumer].append(key)
    return out_of, {n: tuple(v) for n, v in in_of.items()}


def _trace(
    model: nn.Module, x: torch.Tensor, out_of: dict[str, str]
) -> list[tuple[str, nn.Module, str | None, torch.Tensor, torch.Tensor]]:
    """Every leaf-module call of one forward pass: (name, module, output group, in, out).

    A layer in a dependency group produces that group; a channel-preserving module (norm,
    activation, pool) carries the group of its input tensor, or, when that tensor comes from
    a functional op (a residual addition), of the latest module output of the same shape.
    """
    calls: list[tuple[str, nn.Module, str | None, torch.Tensor, torch.Tensor]] = []
    group_of: dict[int, str | None] = {}
    latest: dict[tuple[int, ...], str | None] = {}
    for call in trace_calls(model, x[:1], is_leaf):  # the records keep ids unique
        x_in = call.inputs[0] if call.inputs and torch.is_tensor(call.inputs[0]) else None
        if not torch.is_tensor(call.output) or x_in is None:
            continue
        if call.name in out_of or isinstance(call.module, (nn.Conv2d, nn.Linear)):
            key = out_of.get(call.name)
        elif id(x_in) in group_of:
            key = group_of[id(x_in)]
        else:
            key = latest.get(tuple(x_in.shape))
        group_of[id(call.output)] = key
        latest[tuple(call.output.shape)] = key
        calls.append((call.name, call.module, key, x_in, call.output))
    return calls


def _call_terms(
    module: nn.Module, key: str | None, in_keys: tuple[str, ...], x: torch.Tensor,
    y: torch.Tensor, first: bool,
) -> list[tuple[tuple[tuple[str, ...], str | None], Coeffs]]:
    """The cost of one module call, split into its scaling terms (Torch-Pruning's formulas)."""
    n = x.shape[0]
    weights = _numel(module, "weight") if first else 0.0
    bias = _numel(module, "bias") if first else 0.0
    if isinstance(module, nn.Conv2d):
        positions = prod(y.shape[2:])
        per_position = prod(module.kernel_size) * module.in_channels // module.groups
        macs_w = float(per_position * module.out_channels * positions)
        macs_b = float(module.out_channels * positions) if module.bias is not None else 0.0
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return [(((), key), Coeffs(macs_o=macs_w + macs_b, params_o=weights + bias))]
        return [((in_keys, key), Coeffs(macs_w, weights, macs_b, bias))]
    if isinstance(module, nn.Linear):
        macs_w = float(x.numel() // n * module.out_features)
        macs_b = float(module.out_features) if module.bias is not None else 0.0
        return [((in_keys, key), Coeffs(macs_w, weights, macs_b, bias))]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        macs = float(x.numel() // n * (2 if module.affine else 1))
        return [(((), key), Coeffs(macs_o=macs, params_o=weights + bias))]
    if isinstance(module, _ACTS):
        return [(((), key), Coeffs(macs_o=float(y.numel() // n)))]
    if isinstance(module, _POOLS):
        return [(((), key), Coeffs(macs_o=float(x.numel() // n)))]
    return []


def _numel(module: nn.Module, name: str) -> float:
    tensor = getattr(module, name, None)
    return float(tensor.numel()) if tensor is not None else 0.0


def _branch_of(name: str, branches: Sequence[str]) -> str | None:
    best = None
    for b in branches:
        if name.startswith(b + ".") and (best is None or len(b) > len(best)):
            best = b
    return best
