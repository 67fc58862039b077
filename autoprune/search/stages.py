"""Which proxy trials a two-stage search replays at full fidelity: pure functions.

Stage 1 ends with completed proxy trials (rows holding the search objectives, measured at
the proxy budget, and the trial's flat ``config``). Stage 2 retrains:

- ``replay: front``: every non-dominated row;
- ``replay: {top: K}``: the K best rows in one strict order, non-dominated rank first,
  then crowding distance inside a rank (the ordering of NSGA-II's survivor selection and
  of multi-objective successive halving), so K rows spread along the front before any
  dominated row is taken.

With a target budget, only rows within it are candidates when there are any (a replay
outside the budget cannot be picked); otherwise the rows closest to it (smallest total
violation) come first. The same schedule proposed twice is replayed once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from autoprune.search.flat import schedule_key
from autoprune.search.pareto import non_dominated, priority_positions
from autoprune.search.target import Target


def choose_replays(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str],
                   modes: Sequence[str], replay: str | int,
                   target: Target | None = None) -> list[Mapping[str, Any]]:
    """The rows to replay, best first (see the module docstring)."""
    unique: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        values = [_num(row.get(o)) for o in objectives]
        if all(math.isfinite(v) for v in values):
            unique.setdefault(schedule_key(dict(row.get("config") or {})), row)
    candidates = list(unique.values())
    if target is not None and candidates:
        inside = [r for r in candidates if target.fits(r)]
        if inside:
            candidates = inside
        else:
            least = min(target.total_violation(r) for r in candidates)
            candidates = [r for r in candidates if target.total_violation(r) <= least + 1e-12]
    points = [[_num(r.get(o)) for o in objectives] for r in candidates]
    if replay == "front":
        chosen = non_dominated(points, modes)
        places = priority_positions(points, modes)
        return [candidates[i] for i in sorted(chosen, key=lambda i: places[i])]
    places = priority_positions(points, modes)
    order = sorted(range(len(candidates)), key=lambda i: places[i])
    return [candidates[i] for i in order[:int(replay)]]


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


__all__ = ["choose_replays"]
