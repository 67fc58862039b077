"""Multi-objective successive halving: rungs, promotion, what the sampler and MLflow hear."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.errors import ConfigError
from autoprune.search.fidelity import SchedulerSettings
from autoprune.search.moasha import MultiObjectiveASHA, RungRecords
from autoprune.search.pareto import crowding_distances, nondominated_ranks, priority_positions
from autoprune.search.sampling import DefineByRun
from autoprune.search.searcher import FinalResultSearch
from autoprune.search.space import parse_space
from autoprune.search.trainable import rung_plan
from autoprune.search.trial_log import trial_outcome

MODES = ("max", "min")  # accuracy, macs


def space(**extra: Any) -> dict[str, Any]:
    return {"fixed": {"model": "small_cnn", "dataset": "digits", "training": {"epochs": 12}},
            "searched": {"methods": {"filter": {"target_ratio": {"low": 0.1, "high": 0.9}}}},
            **extra}


# --- rungs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "min_epochs", "eta", "rungs"), [
    (15, 2, 3, (2, 6, 15)), (12, 3, 3, (3, 12)), (8, 2, 2, (2, 4, 8)), (60, 2, 3, (2, 6, 18, 60)),
    (15, 0, 3, (2, 6, 15)),  # default min_epochs: epochs / eta^2
])
def test_rung_levels(epochs: int, min_epochs: int, eta: float, rungs: tuple[int, ...]) -> None:
    assert SchedulerSettings("moasha", min_epochs, eta).rungs(epochs) == rungs
    assert SchedulerSettings("none", min_epochs, eta).rungs(epochs) == (epochs,)


@pytest.mark.parametrize(("block", "message"), [
    ({"name": "moasha", "min_epochs": 12}, "must be below training.epochs"),
    ({"name": "moasha", "reduction_factor": 1}, "reduction_factor must be greater than 1"),
    ({"name": "hyperband"}, "scheduler.name"),
    ({"name": "moasha", "min_epochs": -1}, "min_epochs must be at least 1"),
])
def test_bad_scheduler_blocks(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space(scheduler=block))


def test_searched_epochs_and_moasha_do_not_mix() -> None:
    data = space(scheduler={"name": "moasha", "min_epochs": 2})
    data["searched"]["training"] = {"epochs": {"low": 6, "high": 12}}
    with pytest.raises(ConfigError, match="fixed training.epochs"):
        parse_space(data)


def test_space_exposes_its_rungs() -> None:
    parsed = parse_space(space(scheduler={"name": "moasha", "min_epochs": 2}))
    assert parsed.rungs == (2, 6, 12) and parsed.scheduler.enabled


def test_rung_plan_compresses_the_schedule_and_skips_rungs_it_does_not_fit() -> None:
    raw = {"model": "small_cnn", "dataset": "digits", "training": {"epochs": 12},
           "method": "filter", "method_params": {"start_epoch": 3, "end_epoch": 9}}
    plan = rung_plan(raw, (2, 4, 12))  # 3 phases: too many for 2 epochs
    assert [(k, c.training.epochs) for k, c in plan] == [(1, 4), (2, 12)]
    params, changes = plan[0][1].schedule()
    assert (params["start_epoch"], params["end_epoch"]) == (1, 3) and changes
    assert plan[-1][1].training.schedule_epochs is None  # the full run is the config as sampled
    assert [c.training.epochs for _, c in rung_plan(raw, ())] == [12]


# --- non-dominated sorting ----------------------------------------------------------------


def test_nondominated_ranks_and_crowding() -> None:
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0), (0.85, 12.0), (math.nan, 1.0)]
    assert nondominated_ranks(points, MODES) == [0, 0, 2, 1, 3]
    crowd = crowding_distances([(0.9, 10.0), (0.8, 5.0), (0.85, 7.0)])
    assert crowd[0] == crowd[1] == math.inf and 0 < crowd[2] < math.inf


def test_priority_is_one_strict_order_by_rank_then_crowding() -> None:
    # one front of four: the two ends first (the more accurate one leads), then the more
    # isolated of the two middle points (the fourth); the dominated point last
    points = [(0.9, 10.0), (0.6, 1.0), (0.85, 8.0), (0.84, 7.9), (0.5, 20.0)]
    assert priority_positions(points, MODES) == [0, 1, 3, 2, 4]
    crowd = crowding_distances(points[:4])
    assert crowd[3] > crowd[2]
    # identical points: the earlier one keeps the better place
    assert priority_positions([(0.8, 5.0), (0.8, 5.0)], MODES) == [0, 1]


# --- promotion ----------------------------------------------------------------------------


def test_first_result_is_promoted_then_only_the_top_third() -> None:
    records = RungRecords(MODES, 3)
    assert records.decide("a", 0, [0.80, 10.0])          # alone: top 1 of 1
    assert not records.decide("b", 0, [0.70, 20.0])      # dominated by a: place 1 of 2
    assert records.decide("c", 0, [0.90, 5.0])           # dominates both
    assert not records.decide("d", 0, [0.75, 15.0])      # rank 1 behind a and c
    assert records.decide("g", 0, [0.60, 1.0])           # the front's other end: 2nd of 5
    assert not records.decide("h", 0, [0.61, 2.0])  # on the front between its ends: 3rd of 6
    assert records.decide("e", 1, [0.5, 50.0])           # rungs are compared separately
    assert not records.decide("f", 0, [math.nan, 1.0])   # a failed rung never goes on
    assert records.decide("a", 0, [0.0, 99.0])           # the first decision stands


def test_promoted_share_approaches_one_over_eta() -> None:
    import random

    rng = random.Random(0)
    records = RungRecords(MODES, 3)
    decisions = [records.decide(str(i), 0, [rng.random(), rng.random()]) for i in range(300)]
    assert 0.2 < sum(decisions) / len(decisions) < 0.5


def test_scheduler_stops_only_at_the_end_of_a_lower_rung(tmp_path: Path) -> None:
    sched = MultiObjectiveASHA(("accuracy", "macs"), MODES, (2, 6), 3, str(tmp_path))
    trial = SimpleNamespace(trial_id="a")
    running = {"accuracy": 0.1, "macs": 99.0, "rung_done": False, "is_final": False}
    assert sched.on_trial_result(None, trial, running) == "CONTINUE"
    final = {"accuracy": 0.1, "macs": 99.0, "rung_done": True, "is_final": True, "rung": 1}
    assert sched.on_trial_result(None, trial, final) == "CONTINUE"
    done = {"accuracy": 0.9, "macs": 1.0, "rung_done": True, "is_final": False, "rung": 0}
    assert sched.on_trial_result(None, trial, done) == "CONTINUE"
    worse = {**done, "accuracy": 0.5, "macs": 2.0}
    assert sched.on_trial_result(None, SimpleNamespace(trial_id="b"), worse) == "STOP"
    assert "1 stopped" in sched.debug_string()


def test_rung_records_survive_a_restored_scheduler(tmp_path: Path) -> None:
    """Ray restores a TrialScheduler as pickled at the start; the records file fills it."""
    import pickle

    sched = MultiObjectiveASHA(("accuracy", "macs"), MODES, (2, 6), 3, str(tmp_path))
    blank = pickle.dumps(sched)
    done = {"accuracy": 0.9, "macs": 1.0, "rung_done": True, "is_final": False, "rung": 0}
    sched.on_trial_result(None, SimpleNamespace(trial_id="a"), done)
    restored = pickle.loads(blank)
    worse = {**done, "accuracy": 0.5, "macs": 2.0}
    assert restored.on_trial_result(None, SimpleNamespace(trial_id="b"), worse) == "STOP"
    assert set(restored.records.rungs[0]) == {"a", "b"}


# --- what the sampler and MLflow are told -------------------------------------------------


def test_a_trial_stopped_at_a_rung_is_told_as_pruned_never_complete() -> None:
    parsed = parse_space(space())
    s = FinalResultSearch(DefineByRun(parsed), metric=["accuracy", "macs"], mode=["max", "min"],
                          sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=0))
    for trial_id in "ab":
        s.suggest(trial_id)
    rung_end = {"accuracy": 0.99, "macs": 1.0, "rung_done": True, "is_final": False,
                "trial_status": "running", "rung": 0}
    s.on_trial_complete("a", rung_end)
    s.on_trial_complete("b", {**rung_end, "is_final": True, "trial_status": "completed",
                              "accuracy": 0.5, "macs": 9.0})
    trials = s._ot_study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert trials[1].values == [0.5, 9.0]
    # a duplicate of the pruned schedule is answered from memory, as pruned again
    key = s._keys["a"]
    assert s._outcomes[key][0] == TrialState.PRUNED


@pytest.mark.parametrize(("result", "outcome"), [
    ({"is_final": True, "trial_status": "completed"}, "completed"),
    ({"is_final": True, "trial_status": "failed"}, "failed"),
    ({"is_final": False, "rung_done": True}, "pruned"),
    ({"is_final": False, "rung_done": False}, "stopped"),
    ({}, "stopped"),
])
def test_trial_outcome(result: dict[str, Any], outcome: str) -> None:
    assert trial_outcome(result) == outcome
