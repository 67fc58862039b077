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
