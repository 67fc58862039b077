"""Ray's OptunaSearch, told only what a trial really achieved, and never the same run twice.

Optuna must learn from final results only: a trial that failed, diverged or was stopped
early reports partial values (a validation accuracy after a few epochs, or the result of
a lower multi-fidelity rung) that would corrupt a Pareto front if they were told as
complete. Here such trials are told as failed (errors, NaN) or pruned (stopped by the
TrialScheduler or by an interruption), which the multi-objective samplers ignore.

Evolutionary samplers often propose a schedule that already ran (a crossover of two
parents with the same method and values). Training is seeded, so the result would be the
same: the known result is told for the duplicate and a new schedule is asked for.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)
MAX_REDRAWS = 20


def schedule_key(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable identity of a trial config (floats by repr: exact duplicates only)."""
    return tuple(sorted((str(k), repr(v)) for k, v in config.items()))


class FinalResultSearch(OptunaSearch):
    """OptunaSearch that completes an Optuna trial only with a trial's final report."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcomes: dict[tuple[tuple[str, str], ...], tuple[Any, list[float] | None]] = {}
        """Known outcomes by schedule: (Optuna TrialState, values when complete)."""
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}
        self.redrawn = 0

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        for _ in range(MAX_REDRAWS):
            if not isinstance(config, dict) or schedule_key(config) not in self._outcomes:
                break
            state, values = self._outcomes[schedule_key(config)]
            assert self._ot_study is not None
            self._ot_study.tell(self._ot_trials.pop(trial_id), values, state=state)
            self.redrawn += 1
            config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._keys[trial_id] = schedule_key(config)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._ot_trials:  # e.g. a trial restarted under a new id
            logger.warning("trial %s is unknown to the searcher; not told to Optuna", trial_id)
            return
        result = result or {}
        key = self._keys.get(trial_id)
        from optuna.trial import TrialState

        if result.get("is_final") and result.get("trial_status") == "completed":
            super().on_trial_complete(trial_id, result, error=False)
            if key is not None:
                self._outcomes[key] = (TrialState.COMPLETE,
                                       [float(result[m]) for m in self.metric])
            return
        failed = error or result.get("trial_status") == "failed"
        if key is not None and result.get("trial_status") == "failed":
            # deterministic failure (NaN, invalid): do not rerun
            self._outcomes[key] = (TrialState.FAIL, None)
        elif key is not None and result.get("rung_done") and not error:
            # stopped by the TrialScheduler after a lower rung: it would be stopped again
            self._outcomes[key] = (TrialState.PRUNED, None)
        super().on_trial_complete(trial_id, None, error=failed)  # None: told as pruned/failed


__all__ = ["FinalResultSearch", "schedule_key"]
