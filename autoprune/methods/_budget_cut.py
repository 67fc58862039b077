"""A global cut by factor magnitude that lands a network on MACs/params targets.

Pure planning on a :class:`~autoprune.methods._costmodel.CostModel` (exact for integer
widths): candidates are all channels but the strongest of each group (a group keeps at
least one, or its floor), in ascending order of score. The cut is the shortest prefix of
that order that meets both targets, except that its last channel may be swapped for
another of the next ``window`` candidates that meets them with less overshoot: removing
one channel of a wide, expensive group can cost several percent of the network at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch

from autoprune.methods._costmodel import CostModel

Candidate = tuple[float, str, int]
"""(score, group key, channel index)."""


def candidates(
    scores: Mapping[str, torch.Tensor], keep: Mapping[str, int] | None = None
) -> list[Candidate]:
    """Every channel except each group's ``keep[group]`` (default 1, at least 1)
    highest-scoring ones, weakest first."""
    out: list[Candidate] = []
    for key, s in scores.items():
        values = s.detach().float().cpu().tolist()
        spared = max(1, (keep or {}).get(key, 1))
        order = sorted(range(len(values)), key=values.__getitem__)
        out += [(values[i], key, i) for i in order[: max(0, len(values) - spared)]]
    return sorted(out)


def as_plan(chosen: Sequence[Candidate]) -> dict[str, list[int]]:
    plan: dict[str, list[int]] = {}
    for _, key, idx in chosen:
        plan.setdefault(key, []).append(idx)
    return plan


class Ratios:
    """MACs and params ratios (to the dense network) after removing some candidates."""

    def __init__(self, cost: CostModel, dense: tuple[float, float]) -> None:
        self.cost = cost
        self.dense = dense

    def __call__(self, chosen: Sequence[Candidate]) -> tuple[float, float]:
        removed = Counter(key for _, key, _ in chosen)
        widths = {k: w - removed.get(k, 0) for k, w in self.cost.widths.items()}
        macs, params = self.cost.at_widths(widths)
        return macs / self.dense[0], params / self.dense[1]


def meets(ratios: tuple[float, float], targets: tuple[float, float]) -> bool:
    return ratios[0] <= targets[0] + 1e-12 and ratios[1] <= targets[1] + 1e-12


def shortest_prefix(
    order: Sequence[Candidate], ok: Callable[[Sequence[Candidate]], bool]
) -> int:
    """Smallest k with ``ok(order[:k])`` (monotone); ``len(order)`` if none."""
    lo, hi = 0, len(order)
    if not ok(order[:hi]):
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(order[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def plan_cut(
    order: Sequence[Candidate], ratios: Ratios, targets: tuple[float, float], window: int = 64
) -> list[Candidate]:
    """The channels to remove so that both ratios are at most their targets, as close to
    the tighter one as one channel allows."""
    k = shortest_prefix(order, lambda c: meets(ratios(c), targets))
    if k == 0 or k == len(order) and not meets(ratios(order), targets):
        return list(order[:k])
    base = list(order[: k - 1])
    best, best_slack = order[k - 1], _slack(ratios([*base, order[k - 1]]), targets)
    for cand in order[k : k - 1 + window]:
        r = ratios([*base, cand])
        if meets(r, targets) and _slack(r, targets) < best_slack:
            best, best_slack = cand, _slack(r, targets)
    return [*base, best]


def _slack(ratios: tuple[float, float], targets: tuple[float, float]) -> float:
    return min(targets[0] - ratios[0], targets[1] - ratios[1])
