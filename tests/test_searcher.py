"""The searcher tells Optuna final results only, and answers duplicates from memory."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.search.sampling import DefineByRun
from autoprune.search.searcher import FinalResultSearch
from autoprune.search.space import parse_space


def searcher(methods: dict[str, Any]) -> FinalResultSearch:
    space = parse_space({
        "fixed": {"model": "small_cnn", "dataset": "digits", "training": {"epochs": 4}},
        "searched": {"methods": methods}})
    return FinalResultSearch(DefineByRun(space), metric=["accuracy", "macs"],
                             mode=["max", "min"], sampler=optuna.samplers.RandomSampler(0))


def final(acc: float = 0.9, macs: float = 10.0) -> dict[str, Any]:
    return {"accuracy": acc, "macs": macs, "is_final": True, "trial_status": "completed"}


def test_only_final_completed_results_reach_optuna() -> None:
    s = searcher({"filter": {"target_ratio": {"low": 0.1, "high": 0.9}}})
    for trial_id in "abcd":
        assert s.suggest(trial_id)["method"] == "filter"
    s.on_trial_complete("a", {**final(), "is_final": False, "trial_status": "running"})
    s.on_trial_complete("b", {**final(), "trial_status": "failed"})
    s.on_trial_complete("c", final(0.8, 5.0))
    s.on_trial_complete("d", None, error=True)
    s.on_trial_complete("unknown", final())  # no KeyError (e.g. a restarted trial)
    trials = s._ot_study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.FAIL]
    assert trials[2].values == [0.8, 5.0]


def test_duplicate_schedules_are_answered_and_redrawn() -> None:
    s = searcher({"dense": {}, "filter": {"target_ratio": {"choices": [0.5]}}})
    first = s.suggest("a")
    s.on_trial_complete("a", final(0.9, 10.0))
    second = s.suggest("b")
    assert second != first  # the only other schedule
    s.on_trial_complete("b", final(0.7, 4.0))
    third = s.suggest("c")  # every schedule is known: after the redraws, one runs again
    assert third in (first, second) and s.redrawn >= 20
    told = [t for t in s._ot_study.trials if t.state == TrialState.COMPLETE]
    assert {tuple(t.values) for t in told} == {(0.9, 10.0), (0.7, 4.0)}
