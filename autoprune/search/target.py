"""A search aimed at one budget: ``--target "macs_ratio<=0.25,params<=50k"``.

A :class:`Target` is a conjunction of upper bounds on compute metrics of the final
network. The sampler is told each completed trial's *violations* (Optuna's constrained
optimisation: a trial with every value <= 0 is feasible, an infeasible trial is dominated
by every feasible one, and among infeasible ones the smaller total violation wins), so
NSGA-II and TPE spend their trials inside the budget; ``autoprune pick`` with no budget
flag picks within it.

A violation is relative, ``value / limit - 1``, so that bounds of different units
(MACs, a ratio, milliseconds) weigh alike when several are joined.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoprune.errors import UserError

METRICS = ("macs", "macs_ratio", "params", "params_ratio", "latency_ms")
"""Metrics a target may bound (every completed trial reports them)."""
_COUNTS = ("macs", "params")  # these take 40M / 50k suffixes
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_PART = re.compile(r"\s*([a-z_]+)\s*(<=|<)\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmgt]?)\s*")
VIOLATION_NAN = 1e6
"""Violation of a value that was not measured (NaN): far outside any budget."""


@dataclass(frozen=True)
class Bound:
    """``metric <= limit`` (``<`` is read as ``<=``: the metrics are measured values)."""

    metric: str
    limit: float

    def violation(self, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return VIOLATION_NAN
        if not math.isfinite(number):
            return VIOLATION_NAN
        return number / self.limit - 1.0

    def __str__(self) -> str:
        return f"{self.metric}<={self.limit:g}"


@dataclass(frozen=True)
class Target:
    """Every bound must hold for a trial to be within the target."""

    bounds: tuple[Bound, ...]

    def violations(self, row: Mapping[str, Any]) -> dict[str, float]:
        """``{metric: value / limit - 1}``: feasible when every value is <= 0."""
        return {b.metric: b.violation(row.get(b.metric)) for b in self.bounds}

    def fits(self, row: Mapping[str, Any]) -> bool:
        return all(v <= 1e-12 for v in self.violations(row).values())

    def total_violation(self, row: Mapping[str, Any]) -> float:
        return sum(max(0.0, v) for v in self.violations(row).values())

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(b.metric for b in self.bounds)

    def __str__(self) -> str:
        return ",".join(str(b) for b in self.bounds)


def parse_target(text: str | None, flag: str = "--target") -> Target | None:
    """``"macs_ratio<=0.25,params<=50k"`` -> :class:`Target`; ``None``/empty -> None.
    A UserError names the part that cannot be read."""
    if text is None or not str(text).strip():
        return None
    bounds: list[Bound] = []
    for part in str(text).lower().split(","):
        match = _PART.fullmatch(part)
        if not match:
            raise UserError(f"{flag}: cannot read {part.strip()!r}; write METRIC<=LIMIT "
                            f"(METRIC one of {', '.join(METRICS)}), several joined with ','")
        metric, _, number, suffix = match.groups()
        if metric not in METRICS:
            raise UserError(f"{flag}: unknown metric {metric!r} (allowed: {', '.join(METRICS)})")
        if suffix and metric not in _COUNTS:
            raise UserError(f"{flag}: {metric} takes a plain number, not {number}{suffix}")
        try:
            limit = float(number) * _SUFFIX[suffix]
        except ValueError:
            raise UserError(f"{flag}: {part.strip()!r} is not a number") from None
        if limit <= 0:
            raise UserError(f"{flag}: the limit of {metric} must be positive")
        if any(b.metric == metric for b in bounds):
            raise UserError(f"{flag}: {metric} is bounded twice")
        bounds.append(Bound(metric, limit))
    return Target(tuple(bounds))


def feasible(rows: Sequence[Mapping[str, Any]], target: Target | None) -> list[Mapping[str, Any]]:
    """The rows within ``target`` (all of them without one)."""
    return list(rows) if target is None else [r for r in rows if target.fits(r)]


__all__ = ["METRICS", "Bound", "Target", "feasible", "parse_target"]
