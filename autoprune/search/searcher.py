"""Ray's OptunaSearch, told only what a trial really achieved, and never the same run twice.

Optuna must learn from final results only: a trial that failed, diverged or was stopped
early reports partial values (a validation accuracy after a few epochs, or the result of
a lower multi-fidelity rung) that would corrupt a Pareto front if they were told as
complete. Here such trials are told as failed (errors, NaN) or pruned (stopped by the
TrialScheduler or by an interruption), which the multi-objective samplers ignore.

With a target budget (``--target``), every completed trial's relative violation of each
bound is set as an Optuna constraint before it is told (``Trial.set_constraint``): NSGA-II,
NSGA-III and TPE then rank infeasible trials behind every feasible one.

Evolutionary samplers often propose a schedule that already ran (a crossover of two
parents with the same method and values). Training is seeded, so the result would be the
same: the known result is told for the duplicate and a new schedule is asked for.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from autoprune.search.flat import schedule_key
from autoprune.search.target import Target

logger = logging.getLogger(__name__)
MAX_REDRAWS = 20
Outcome = tuple[Any, list[float] | None, dict[str, float]]


def _set_constraints(ot_trial: Any, constraints: dict[str, float]) -> None:
    """Tell Optuna the trial's violation of each bound of the target (<= 0: within)."""
    for name, value in constraints.items():
        ot_trial.set_constraint(name, value)


class FinalResultSearch(OptunaSearch):
    """OptunaSearch that completes an Optuna trial only with a trial's final report."""

    def __init__(self, *args: Any, target: Target | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self._outcomes: dict[tuple[tuple[str, str], ...], Outcome] = {}
        """Known outcomes by schedule: (Optuna TrialState, values when complete, constraints)."""
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}
        self.redrawn = 0

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        for _ in range(MAX_REDRAWS):
            if not isinstance(config, dict) or schedule_key(config) not in self._outcomes:
                break
            state, values, constraints = self._outcomes[schedule_key(config)]
            assert self._ot_study is not None
            ot_trial = self._ot_trials.pop(trial_id)
            _set_constraints(ot_trial, constraints)
            self._ot_study.tell(ot_trial, values, state=state)
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
            constraints = self.target.violations(result) if self.target is not None else {}
            _set_constraints(self._ot_trials[trial_id], constraints)
            super().on_trial_complete(trial_id, result, error=False)
            if key is not None:
                self._outcomes[key] = (TrialState.COMPLETE,
                                       [float(result[m]) for m in self.metric], constraints)
            return
        failed = error or result.get("trial_status") == "failed"
        if key is not None and result.get("trial_status") == "failed":
            # deterministic failure (NaN, invalid): do not rerun
            self._outcomes[key] = (TrialState.FAIL, None, {})
        elif key is not None and result.get("rung_done") and not error:
            # stopped by the TrialScheduler after a lower rung: it would be stopped again
            self._outcomes[key] = (TrialState.PRUNED, None, {})
        super().on_trial_complete(trial_id, None, error=failed)  # None: told as pruned/failed


class ReplaySearch(Searcher):
    """Stage 2 of a two-stage search: hands out a fixed list of trial configs, one per
    trial, then FINISHED. Its position is saved with the experiment, so a resumed stage 2
    neither repeats nor skips a replay."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = [dict(c) for c in configs]
        self.handed: dict[str, int] = {}

    def suggest(self, trial_id: str) -> Any:
        """The next replay's config (the same one again for a trial id it has seen), then
        ``Searcher.FINISHED``."""
        if trial_id in self.handed:
            return dict(self.configs[self.handed[trial_id]])
        if len(self.handed) >= len(self.configs):
            return Searcher.FINISHED
        self.handed[trial_id] = len(self.handed)
        return dict(self.configs[self.handed[trial_id]])

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Nothing is learnt in stage 2: the replays were chosen before it started."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as out:
            json.dump({"configs": self.configs, "handed": self.handed}, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as src:
            state = json.load(src)
        self.configs, self.handed = state["configs"], state["handed"]


__all__ = ["FinalResultSearch", "ReplaySearch", "schedule_key"]
