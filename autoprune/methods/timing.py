"""Epoch-valued method parameters, and how a schedule keeps its meaning at another budget.

A method declares which of its parameters count epochs with :func:`epoch_field`, and of
what kind:

- ``after``: an epoch number; something happens at the end of that epoch (the first
  pruning step, the last growth step, the final cut). Its phase boundary is the epoch.
- ``from``: an epoch number; a phase starts *with* that epoch (gates that act from
  ``start_epoch`` on). Its phase boundary is the epoch before it.
- ``every``: a period in epochs (prune every ``frequency`` epochs), at least 1;
  ``within`` names an ``after`` field it may not exceed.
- ``before_end``: a count of epochs at the end of training (``retrain_epochs``); its
  phase boundary is ``epochs - value``.

A schedule written for ``E`` epochs replays at ``N`` epochs by :func:`rescale`: the phase
boundaries (0, every boundary above, ``E``) are mapped to ``round(b * N / E)``, then
nudged so that boundaries that were distinct stay distinct and in the same order (every
phase keeps at least one epoch) and boundaries that coincided still coincide; periods
scale the same way (at least 1). When ``N`` is smaller than the number of phases, the
schedule cannot keep its meaning and :class:`~autoprune.errors.ConfigError` says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from autoprune.errors import ConfigError

Kind = Literal["after", "from", "every", "before_end"]
_POSITIONS = ("after", "from", "before_end")
_KEY = "autoprune.epochs"


@dataclass(frozen=True)
class EpochSpec:
    kind: Kind
    within: str | None = None


def epoch_field(default: int, kind: Kind, within: str | None = None) -> Any:
    """A dataclass field whose value counts epochs (see the module docstring)."""
    return dataclasses.field(default=default, metadata={_KEY: EpochSpec(kind, within)})


def epoch_bounds(spec: EpochSpec, default: Any, epochs: int) -> tuple[int, int]:
    """Allowed values of an epoch-valued field in a run of ``epochs`` epochs: a period
    ``[1, epochs]``; an epoch number ``[1, epochs]``, or ``[0, epochs]`` for a field whose
    default 0 means "derived from the epochs"; a count at the end ``[0, epochs - 1]`` (the
    rest of training needs one epoch)."""
    if spec.kind == "every":
        return 1, epochs
    if spec.kind == "before_end":
        return 0, epochs - 1
    return (0 if default == 0 else 1), epochs


def epoch_fields(params_cls: Any) -> dict[str, EpochSpec]:
    """The epoch-valued fields of a method's ``Params`` dataclass, by name."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(params_cls)
            if _KEY in f.metadata}


def _boundary(spec: EpochSpec, value: int, epochs: int) -> int:
    if spec.kind == "from":
        return value - 1
    if spec.kind == "before_end":
        return epochs - value
    return value


def _from_boundary(spec: EpochSpec, boundary: int, epochs: int) -> int:
    if spec.kind == "from":
        return boundary + 1
    if spec.kind == "before_end":
        return epochs - boundary
    return boundary


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def fit_boundaries(boundaries: list[int], old: int, new: int) -> dict[int, int]:
    """Map sorted distinct phase boundaries ``0 = b0 < ... < bk = old`` onto ``0..new``,
    proportionally, keeping them distinct and ordered. Raises ValueError if ``new < k``."""
    phases = len(boundaries) - 1
    if new < phases:
        raise ValueError(f"{phases} phases need at least {phases} epochs")
    q = [_round(b * new / old) for b in boundaries]
    q[0], q[-1] = 0, new
    for i in range(1, phases):
        q[i] = max(q[i], q[i - 1] + 1)
    for i in range(phases - 1, 0, -1):
        q[i] = min(q[i], q[i + 1] - 1)
    return dict(zip(boundaries, q))


def rescale(params: Any, old: int, new: int) -> tuple[Any, dict[str, tuple[int, int]]]:
    """``params`` (a method's Params, valid for ``old`` epochs) with every epoch-valued
    field moved to ``new`` epochs; also ``{field: (old value, new value)}`` for the fields
    that changed. Automatic values (0 = "derived from the epochs") are resolved first."""
    if old == new:
        return params, {}
    resolved = params.resolve(old)
    specs = epoch_fields(type(resolved))
    values = {name: int(getattr(resolved, name)) for name in specs}
    positions = {n: _boundary(s, values[n], old) for n, s in specs.items() if s.kind in _POSITIONS}
    boundaries = sorted({0, old, *positions.values()})
    try:
        moved = fit_boundaries(boundaries, old, new)
    except ValueError:
        shown = ", ".join(f"{n}={values[n]}" for n in positions)
        raise ConfigError(
            f"the schedule does not fit in {new} epochs: {shown} of {old} epochs make "
            f"{len(boundaries) - 1} phases of at least one epoch each; give at least "
            f"{len(boundaries) - 1} epochs"
        ) from None
    out = {n: _from_boundary(specs[n], moved[b], new) for n, b in positions.items()}
    for name, spec in specs.items():
        if spec.kind == "every":
            period = max(1, _round(values[name] * new / old))
            if spec.within is not None:
                period = min(period, max(1, out.get(spec.within, new)))
            out[name] = period
    changes = {n: (values[n], out[n]) for n in specs if out[n] != values[n]}
    return dataclasses.replace(resolved, **out), changes


def describe(specs: Mapping[str, EpochSpec]) -> str:
    """``start_epoch (after), frequency (every)``: for ``autoprune methods``."""
    return ", ".join(f"{n} ({s.kind})" for n, s in specs.items())


__all__ = ["EpochSpec", "describe", "epoch_bounds", "epoch_field", "epoch_fields",
           "fit_boundaries", "rescale"]
