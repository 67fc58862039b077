"""Which kinds of structural change a network allows: the marks of ``autoprune models``.

- ``prune``: Torch-Pruning can follow its channels, so channels can be removed (every
  method but ``dense`` needs it);
- ``grow``: every channel group can also be split (``cgap``'s growth phase);
- ``layers``: it has residual blocks with an identity shortcut, whose branches
  ``variational`` can remove.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoprune.methods._branches import identity_blocks
from autoprune.surgery.graph import DependencyIndex, UnprunableModelError
from autoprune.surgery.grow import NotGrowableError, check_growable

KINDS: tuple[str, ...] = ("prune", "grow", "layers")


@dataclass(frozen=True)
class Support:
    """What a model allows, with the reason for each ``False`` (one line)."""

    prune: bool
    grow: bool
    layers: bool
    why_not: dict[str, str]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if getattr(self, k))


def measure_support(model: nn.Module, example_input: torch.Tensor) -> Support:
    """Find out, on the network itself, which structural changes it allows."""
    why: dict[str, str] = {}
    layers = bool(identity_blocks(model))
    if not layers:
        why["layers"] = "no residual block with an identity shortcut"
    try:
        index = DependencyIndex(model, example_input)
    except UnprunableModelError as error:
        why["prune"] = why["grow"] = str(error)
        return Support(False, False, False, {**why, "layers": str(error)})
    try:
        check_growable(model, index)
        grow = True
    except NotGrowableError as error:
        grow = False
        why["grow"] = str(error)
    return Support(True, grow, layers, why)


KIND_WORDS = {
    "prune": "channel removal (filter, prune_retrain, activation_density, variational, hfp)",
    "grow": "growth (cgap: grow, then prune)",
    "layers": "residual-branch removal (variational)",
}


@dataclass(frozen=True)
class GroupInfo:
    """One prunable channel group: its key (root layer), width and the layers it spans."""

    key: str
    width: int
    layers: tuple[str, ...]


@dataclass(frozen=True)
class NetworkReport:
    """What ``autoprune check`` prints: dense compute, channel groups, what applies."""

    macs: int
    params: int
    groups: tuple[GroupInfo, ...]
    support: Support
    blocked: tuple[tuple[str, str], ...]
    """(layer, why) for every part that cannot be pruned."""
    branches: tuple[str, ...]
    """Residual blocks with an identity shortcut (their branches can be removed)."""
    shifted: tuple[str, ...] = ()
    """Groups whose removal changes more than the removed channels (see
    :func:`~autoprune.surgery.probe.probe_function`): prunable, but not exactly."""


def network_report(model: nn.Module, example_input: torch.Tensor) -> NetworkReport:
    """Measure everything :class:`NetworkReport` holds on the network itself. Raises
    :class:`UnprunableModelError` (naming the layer) when its channels cannot be followed
    at all."""
    from autoprune.compute import count_macs_params
    from autoprune.surgery.graph import ROOT_TYPES
    from autoprune.surgery.grow import growth_edits
    from autoprune.surgery.probe import probe_function, probe_removal
    from autoprune.surgery.trace import trace_calls

    x = example_input[:1]
    macs, params = count_macs_params(model, x)
    index = DependencyIndex(model, x)
    groups = tuple(GroupInfo(k, g.width, tuple(g.out_modules)) for k, g in index.groups.items())
    broken = probe_removal(model, x)
    names = {m: n for n, m in model.named_modules()}
    blocked: list[tuple[str, str]] = [
        (names[index.classifier], "the classifier: its outputs are the classes")]
    blocked += [(key, f"removing a channel breaks the forward pass ({why})")
                for key, why in broken.items()]
    grouped = {n for g in groups for n in g.layers} | set(broken)
    run = {c.name for c in trace_calls(model, x, lambda _n, m: isinstance(m, ROOT_TYPES))}
    for name, module in model.named_modules():
        if not isinstance(module, ROOT_TYPES) or name in grouped or module is index.classifier:
            continue
        reason = ("not run in the forward pass" if name not in run else
                  "its output channels are in no dependency group (Torch-Pruning cannot "
                  "follow what consumes them)")
        blocked.append((name, reason))
    blocked += [(g.key, f"width {g.width}: nothing to remove") for g in groups if g.width < 2]
    shifted = tuple(probe_function(model, x)) if not broken else ()
    grow_why = []
    for key in index.groups:
        try:
            growth_edits(model, index, key)
        except NotGrowableError as error:
            grow_why.append(str(error))
    blocks = tuple(identity_blocks(model))
    why: dict[str, str] = {}
    prune = bool(groups) and not broken
    if not groups:
        why["prune"] = "no prunable channel group"
    elif broken:
        key = next(iter(broken))
        why["prune"] = f"removing a channel of layer {key!r} breaks the forward pass " \
                       f"({broken[key]})"
    if grow_why or not prune:
        why["grow"] = grow_why[0] if grow_why else why["prune"]
    if not blocks:
        why["layers"] = ("no residual block with an identity shortcut (a module computing "
                         "x + branch(x) is one when it sets has_identity_shortcut = True)")
    support = Support(prune, prune and not grow_why, bool(blocks), why)
    return NetworkReport(macs, params, groups, support, tuple(blocked), blocks, shifted)


def check_method_fits(model: nn.Module, example_input: torch.Tensor, method: str,
                      requires: tuple[str, ...]) -> None:
    """UserError naming the layer unless the network allows every structural change
    ``method`` makes (the engine's check of the user's own network before epoch 1)."""
    from autoprune.errors import UserError
    from autoprune.surgery.probe import probe_removal

    x = example_input[:1]
    index = DependencyIndex(model, x)  # UnprunableModelError names the layer
    if "prune" in requires:
        if not index.groups:
            raise UserError(f"method {method!r} removes channels; the network has no prunable "
                            "channel group (see 'autoprune check')")
        broken = probe_removal(model, x)
        if broken:
            key, why = next(iter(broken.items()))
            raise UserError(f"method {method!r} cannot prune this network: removing a channel "
                            f"of layer {key!r} breaks its forward pass ({why}); e.g. a size "
                            "written into a view/reshape. Train it with method 'dense', or "
                            "compute sizes from the tensors (see 'autoprune check')")
    if "grow" in requires:
        try:
            check_growable(model, index)
        except NotGrowableError as error:
            raise UserError(f"method {method!r} grows channels; this network cannot: "
                            f"{error}") from None
