"""Multi-fidelity settings of a search: which TrialScheduler, and its rungs.

``scheduler: {name: moasha, min_epochs: 2, reduction_factor: 3}`` in a space file (or
``--scheduler moasha``) runs every trial as a sequence of *rungs*: complete trainings of
the same schedule compressed to ``min_epochs``, ``min_epochs * eta``, ... and finally the
space's ``training.epochs`` (full fidelity). After each lower rung the TrialScheduler
(:mod:`autoprune.search.moasha`) keeps the trial going only if it is in the top
``1 / reduction_factor`` of that rung by non-dominated sorting on the search objectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autoprune.errors import ConfigError

SCHEDULERS = ("none", "moasha")


@dataclass(frozen=True)
class SchedulerSettings:
    """The ``scheduler`` block of a space file. ``min_epochs`` 0 means: chosen from the
    epochs (``epochs / reduction_factor**2``, at least 1: three rungs where they fit)."""

    name: Literal["none", "moasha"] = "none"
    min_epochs: int = 0
    reduction_factor: float = 3.0

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def validate(self, epochs: int) -> None:
        if self.name not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler.name {self.name!r} (allowed: none, moasha)")
        if not self.reduction_factor > 1:
            raise ConfigError(f"scheduler.reduction_factor must be greater than 1, got "
                              f"{self.reduction_factor}")
        if self.min_epochs < 0:
            raise ConfigError(f"scheduler.min_epochs must be at least 1, got {self.min_epochs}")
        if self.enabled and self.resolved_min(epochs) >= epochs:
            raise ConfigError(f"scheduler.min_epochs ({self.resolved_min(epochs)}) must be "
                              f"below training.epochs ({epochs}): a rung is shorter than "
                              "a full trial")

    def resolved_min(self, epochs: int) -> int:
        return self.min_epochs or max(1, round(epochs / self.reduction_factor**2))

    def rungs(self, epochs: int) -> tuple[int, ...]:
        """Epochs of each rung, the last being full fidelity (``(epochs,)`` without one):
        ``min_epochs * reduction_factor**k`` below ``epochs``, then ``epochs``. A lower
        rung within a factor ``sqrt(reduction_factor)`` of the full budget is dropped: it
        would cost almost a full trial and tell little more (12 epochs, min 3, factor 3:
        rungs 3 and 12, not 3, 9 and 12)."""
        if not self.enabled:
            return (epochs,)
        levels: list[int] = []
        level = float(self.resolved_min(epochs))
        while round(level) < epochs:
            if not levels or round(level) > levels[-1]:
                levels.append(round(level))
            level *= self.reduction_factor
        if len(levels) > 1 and epochs / levels[-1] < self.reduction_factor ** 0.5:
            levels.pop()
        return (*levels, epochs)


__all__ = ["SCHEDULERS", "SchedulerSettings"]
