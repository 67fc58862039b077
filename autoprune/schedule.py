"""PruningSchedules: how much, and when, as pure functions of the epoch.

Epochs are counted from 1: ``epoch`` is the number of epochs completed when a method's
end-of-epoch hook runs. A schedule never looks at the model, so it can be tested,
plotted and searched over on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RAMPS: dict[str, Callable[[float], float]] = {
    "linear": lambda p: p,
    # Zhu & Gupta's gradual pruning: fast at first, gentle as the network gets small.
    "cubic": lambda p: 1.0 - (1.0 - p) ** 3,
}


@dataclass(frozen=True)
class PruningSchedule:
    """Fraction of channels pruned after each epoch: 0 until ``start_epoch``, rising along
    ``ramp`` at every ``frequency``-th epoch, exactly ``target_ratio`` from ``end_epoch`` on.
    """

    start_epoch: int
    end_epoch: int
    target_ratio: float
    frequency: int = 1
    ramp: str = "linear"

    def __post_init__(self) -> None:
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {sorted(RAMPS)}, not {self.ramp!r}")
        if not 1 <= self.start_epoch <= self.end_epoch:
            raise ValueError("need 1 <= start_epoch <= end_epoch")
        if self.frequency < 1:
            raise ValueError("frequency must be at least 1")
        if not 0.0 <= self.target_ratio < 1.0:
            raise ValueError("target_ratio must be in [0, 1)")

    def is_step(self, epoch: int) -> bool:
        """Whether the schedule changes the pruned fraction after ``epoch``."""
        if epoch == self.end_epoch:
            return True
        return self.start_epoch <= epoch < self.end_epoch and (
            (epoch - self.start_epoch) % self.frequency == 0
        )

    def fraction(self, epoch: int) -> float:
        """Pruned fraction in force after ``epoch`` (held between steps)."""
        if epoch < self.start_epoch:
            return 0.0
        if epoch >= self.end_epoch:
            return self.target_ratio
        last_step = epoch - (epoch - self.start_epoch) % self.frequency
        span = self.end_epoch - self.start_epoch + 1
        progress = (last_step - self.start_epoch + 1) / span
        return self.target_ratio * RAMPS[self.ramp](progress)

    def steps(self) -> list[int]:
        """All epochs after which the pruned fraction changes."""
        return [e for e in range(1, self.end_epoch + 1) if self.is_step(e)]
