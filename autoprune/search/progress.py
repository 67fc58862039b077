"""Live progress in the terminal: a line per finished trial, then the current front.

A ``ray.tune`` Callback, so it sees every trial (also the ones restored on resume) and
prints nothing else: Ray's own progress output is turned off (``verbose=0``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from autoprune.search.pareto import front

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def human(value: Any, objective: str = "") -> str:
    """Compact numbers: 0.9213 -> '0.921', 1.06e6 MACs -> '1.06M'."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    if objective in ("accuracy", "val_accuracy"):
        return f"{value:.3f}"
    if objective == "latency_ms":
        return f"{value:.2f}ms"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def completed_results(trials: Sequence[Trial], ending: Trial | None = None) -> list[dict]:
    """Final results of the trials that completed (``ending``: one completing right now)."""
    rows = []
    for trial in trials:
        result = trial.last_result or {}
        ended = trial.status == "TERMINATED" or trial is ending
        if ended and result.get("is_final") and result.get("trial_status") == "completed":
            rows.append({**result, "trial_id": trial.trial_id,
                         "method": trial.config.get("method", "")})
    return rows


def front_line(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str],
               modes: Sequence[str]) -> str:
    """``front (3): 0.954 @ 4.19M | 0.921 @ 1.06M | ...``"""
    best = front(rows, objectives, modes)
    points = list(dict.fromkeys(" @ ".join(human(r.get(o), o) for o in objectives) for r in best))
    return f"front ({len(best)} trials): " + " | ".join(points)


class ProgressPrinter(Callback):
    """Prints ``[done/total] trial ... completed: accuracy ..., macs ...`` and the front."""

    label = "front"  # default for a printer pickled before labels existed

    def __init__(self, objectives: tuple[str, ...], modes: tuple[str, ...], total: int,
                 label: str = "front") -> None:
        self.objectives, self.modes, self.total = objectives, modes, total
        self.label = label
        self._start = time.monotonic()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        from autoprune.search.trial_log import trial_outcome

        result = trial.last_result or {}
        status = trial_outcome(result)
        if status in ("completed", "pruned"):
            what = ", ".join(f"{o} {human(result.get(o), o)}" for o in self.objectives)
            if status == "pruned":
                status = f"pruned after rung {result.get('rung')} ({result.get('epochs')} epochs)"
        else:
            what = str(result.get("failure", ""))[:120]
        self._line(trials, trial, status, what)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        error = trial.get_error()
        last = str(error).strip().splitlines()[-1] if error is not None else "error"
        self._line(trials, trial, "failed", last[:120])

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        what = "interrupted" if was_interrupted(trials, self.total) else "finished"
        print(f"search {what} after {time.monotonic() - self._start:.0f} s: "
              f"{self._counts(trials)}", flush=True)

    def _line(self, trials: Sequence[Trial], trial: Trial, status: str, what: str) -> None:
        method = trial.config.get("method", "?")
        counts = self._counts(trials, trial, ending_failed=status == "failed")
        print(f"[{counts}] {trial.trial_id} {method} {status}: {what}", flush=True)
        rows = completed_results(trials, trial)
        if rows:
            line = front_line(rows, self.objectives, self.modes)
            print(f"  {self.label}{line.removeprefix('front')}", flush=True)

    def _counts(self, trials: Sequence[Trial], ending: Trial | None = None,
                ending_failed: bool = False) -> str:
        """``done/total done, running, failed``; ``ending`` is finishing right now."""
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        failed = ending_failed + sum(
            t is not ending and (t.status == "ERROR" or _failed_result(t)) for t in trials)
        return f"{done}/{self.total} done, {running} running, {failed} failed"


def was_interrupted(trials: Sequence[Any], total: int) -> bool:
    """Whether a search ended before all its trials did (Ctrl-C, a lost driver, ...)."""
    ended = [t for t in trials if t.status == "ERROR" or (
        t.status == "TERMINATED" and ((t.last_result or {}).get("is_final")
                                      or (t.last_result or {}).get("rung_done")))]
    return len(ended) < max(total, len(trials))


def _failed_result(trial: Trial) -> bool:
    return bool((trial.last_result or {}).get("trial_status") == "failed")


__all__ = ["ProgressPrinter", "completed_results", "front_line", "human", "was_interrupted"]
