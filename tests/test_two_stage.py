"""Validation chooses, test reports; two-stage searches; searches aimed at a budget.

Fast unit tests of the pieces (no Ray session): the ``fidelity:`` block, which proxy
trials are replayed, the proxy budget of a trial, what the sampler is told, the target's
constraints, and which accuracy each view uses. The real two-stage search runs in
``tests/test_search_e2e.py``.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.errors import ConfigError, UserError
from autoprune.search.fidelity import TwoStage, parse_two_stage
from autoprune.search.space import parse_space
from autoprune.search.stages import choose_replays
from autoprune.search.target import parse_target

BASE: dict[str, Any] = {
    "fixed": {"model": "small_cnn", "dataset": {"name": "digits", "train_subset": 800},
              "training": {"epochs": 6}},
    "searched": {"methods": {"dense": {}, "filter": {"target_ratio": {"low": 0.1,
                                                                      "high": 0.9}}}},
}
MODES = ("max", "min")


def space(**extra: Any) -> Any:
    return parse_space({**BASE, **extra})


# --- the fidelity block -----------------------------------------------------------------


def test_fidelity_block_parses() -> None:
    s = space(fidelity={"proxy": {"epochs": 2, "train_subset": 400}, "replay": {"top": 5}})
    assert s.fidelity == TwoStage(2, 400, 5) and s.fidelity.enabled
    assert space(fidelity={"proxy": {"epochs": 3}}).fidelity.replay == "front"
    assert not space().fidelity.enabled


@pytest.mark.parametrize(("block", "words"), [
    ({"proxy": {"epochs": 2}, "replay": "all"}, "fidelity.replay"),
    ({"proxy": {"epochs": 0}}, "fidelity.proxy.epochs"),
    ({"proxy": {"epochs": 9}}, "fidelity.proxy.epochs must be in [1, training.epochs=6]"),
    ({"proxy": {"epochs": 6}}, "fidelity.proxy must be cheaper"),
    ({"proxy": {"train_subset": 900}}, "must not exceed dataset.train_subset (800)"),
    ({"proxy": {"epochs": 2, "batch": 3}}, "fidelity.proxy.batch"),
    ({"proxy": {"epochs": 2}, "stages": 2}, "fidelity.stages"),
    ({"replay": "front"}, "fidelity.proxy must be a mapping"),
    ({"proxy": {"epochs": 2}, "replay": {"top": 0}}, "fidelity.replay.top"),
])
def test_bad_fidelity_blocks_name_the_key(block: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        space(fidelity=block)
    assert words in str(err.value)


def test_fidelity_and_moasha_do_not_mix_and_searches_need_validation() -> None:
    with pytest.raises(ConfigError, match="choose one"):
        space(fidelity={"proxy": {"epochs": 2}}, scheduler={"name": "moasha"})
    fixed = {**BASE["fixed"], "dataset": {"name": "digits", "val_fraction": 0.0}}
    with pytest.raises(ConfigError, match="val_fraction"):
        parse_space({**BASE, "fixed": fixed})


def test_command_line_flags_override_the_block(tmp_path: Path) -> None:
    import yaml

    from autoprune.cli.search import search_request

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "fidelity": {"proxy": {"epochs": 2}}}))

    def request(**flags: Any) -> Any:
        defaults = {"space": str(path), "num_samples": None, "sampler": None, "seed": None,
                    "max_concurrent": None, "max_failures": None, "scheduler": None,
                    "proxy_epochs": None, "proxy_train_subset": None, "replay": None,
                    "full_fidelity": False, "target": None, "storage_path": str(tmp_path),
                    "name": "x", "tracking_uri": f"sqlite:///{tmp_path / 'db'}",
                    "address": None, "resume": False}
        return search_request(argparse.Namespace(**{**defaults, **flags})).space

    assert request().fidelity == TwoStage(2, None, "front")
    assert request(proxy_epochs=3, proxy_train_subset=200, replay="4").fidelity == TwoStage(
        3, 200, 4)
    assert not request(full_fidelity=True).fidelity.enabled
    assert str(request(target="macs_ratio<=0.3").target) == "macs_ratio<=0.3"
    with pytest.raises(UserError, match="--target: unknown metric 'flops'"):
        request(target="flops<=3")


def test_parse_two_stage_accepts_nothing() -> None:
    assert parse_two_stage(None) == TwoStage() and parse_two_stage({}) == TwoStage()


# --- which proxy trials are replayed ------------------------------------------------------


def rows(*points: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"accuracy": a, "macs": m, "macs_ratio": m / 100.0, "trial_id": f"t{i}",
             "config": {"method": "filter", "filter.target_ratio": i}}
            for i, (a, m) in enumerate(points)]


def test_replay_front_is_the_non_dominated_proxy_trials() -> None:
    proxy = rows((0.9, 100), (0.8, 50), (0.7, 60), (0.6, 10), (float("nan"), 1))
    chosen = choose_replays(proxy, ("accuracy", "macs"), MODES, "front")
    assert {r["trial_id"] for r in chosen} == {"t0", "t1", "t3"}


def test_replay_top_k_takes_ranks_then_crowding() -> None:
    # front: t0, t1, t2, t3 (t1 and t2 crowded together); second rank: t4
    proxy = rows((0.9, 100), (0.8, 50), (0.79, 48), (0.6, 10), (0.5, 60))
    top3 = [r["trial_id"] for r in choose_replays(proxy, ("accuracy", "macs"), MODES, 3)]
    assert set(top3[:2]) == {"t0", "t3"} and top3[2] in ("t1", "t2")  # the ends first
    top5 = [r["trial_id"] for r in choose_replays(proxy, ("accuracy", "macs"), MODES, 5)]
    assert top5[-1] == "t4"  # a dominated trial only after the whole front


def test_replays_are_unique_schedules() -> None:
    proxy = rows((0.9, 100), (0.9, 100))
    proxy[1]["config"] = dict(proxy[0]["config"])
    assert len(choose_replays(proxy, ("accuracy", "macs"), MODES, 5)) == 1


def test_replays_stay_within_the_target_where_any_proxy_does() -> None:
    proxy = rows((0.9, 100), (0.8, 50), (0.7, 20), (0.6, 10))
    target = parse_target("macs_ratio<=0.3")
    chosen = choose_replays(proxy, ("accuracy", "macs"), MODES, "front", target)
    assert {r["trial_id"] for r in chosen} == {"t2", "t3"}
    nothing_fits = parse_target("macs_ratio<=0.01")
    closest = choose_replays(proxy, ("accuracy", "macs"), MODES, "front", nothing_fits)
    assert [r["trial_id"] for r in closest] == ["t3"]


# --- a proxy trial's budget -----------------------------------------------------------------


def test_proxy_plan_rescales_and_subsets_and_makes_room_for_phases() -> None:
    from autoprune.search.trainable import proxy_plan

    raw = {"model": "small_cnn", "dataset": {"name": "digits", "train_subset": 800},
           "training": {"epochs": 6}, "method": "filter",
           "method_params": {"target_ratio": 0.5, "start_epoch": 2, "end_epoch": 4}}
    [(_, config)] = proxy_plan(raw, {"epochs": 3, "train_subset": 400})
    assert config.training.epochs == 3 and config.training.schedule_epochs == 6
    assert config.dataset.train_subset == 400
    [(_, short)] = proxy_plan(raw, {"epochs": 1, "train_subset": None})
    assert short.training.epochs == 3  # warm-up, ramp and fine-tuning need 3 epochs
    assert short.dataset.train_subset == 800


def test_results_choose_on_validation_and_carry_test() -> None:
    from autoprune.search.trainable import _summary_values

    values = _summary_values({"accuracy": 0.7, "test_accuracy": 0.7, "val_accuracy": 0.8,
                              "macs": 5.0, "params": 2.0, "train_flops": 9.0,
                              "latency_ms": 1.0})
    assert values["accuracy"] == 0.8 and values["val_accuracy"] == 0.8
    assert values["test_accuracy"] == 0.7
    proxy = _summary_values({"accuracy": None, "test_accuracy": None, "val_accuracy": 0.6,
                             "macs": 5.0, "params": 2.0, "train_flops": 9.0, "latency_ms": 1.0})
    assert proxy["accuracy"] == 0.6 and "test_accuracy" not in proxy


def test_engine_reports_final_validation_and_test_only_when_asked(tmp_path: Path) -> None:
    from autoprune.config import parse_train_config
    from autoprune.engine import train

    config = parse_train_config({
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 300},
        "training": {"epochs": 1, "batch_size": 64, "seed": 0}, "method": "dense"})
    proxy = train(config, tmp_path / "p", progress=False, measure_test=False)
    assert proxy["accuracy"] is None and proxy["test_accuracy"] is None
    assert 0.0 <= proxy["val_accuracy"] <= 1.0
    full = train(config, tmp_path / "f", progress=False, resume=False)
    assert full["accuracy"] == full["test_accuracy"] is not None
    assert full["val_accuracy"] == proxy["val_accuracy"]  # same seed, same network


# --- what the sampler is told --------------------------------------------------------------


def searcher(target: str | None = None) -> Any:
    from autoprune.search.sampling import DefineByRun
    from autoprune.search.searcher import FinalResultSearch

    return FinalResultSearch(DefineByRun(space()), metric=["accuracy", "macs"],
                             mode=["max", "min"], sampler=optuna.samplers.NSGAIISampler(seed=0),
                             target=parse_target(target))


def final(acc: float, ratio: float) -> dict[str, Any]:
    return {"accuracy": acc, "macs": ratio * 100, "macs_ratio": ratio, "is_final": True,
            "trial_status": "completed", "fidelity": "proxy"}


def test_proxy_results_are_told_as_complete_with_the_targets_violations() -> None:
    s = searcher("macs_ratio<=0.25")
    for trial_id in "ab":
        s.suggest(trial_id)
    s.on_trial_complete("a", final(0.9, 0.5))
    s.on_trial_complete("b", final(0.8, 0.2))
    told = s._ot_study.trials
    assert [t.state for t in told] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert told[0].values == [0.9, 50.0]
    assert told[0].constraints == {"macs_ratio": pytest.approx(1.0)}  # 0.5 / 0.25 - 1
    assert told[1].constraints == {"macs_ratio": pytest.approx(-0.2)}


def test_without_a_target_nothing_is_constrained() -> None:
    s = searcher()
    s.suggest("a")
    s.on_trial_complete("a", final(0.9, 0.5))
    assert s._ot_study.trials[0].constraints == {}


def test_nsga2_keeps_feasible_parents_before_better_infeasible_ones() -> None:
    """Optuna's constrained domination, as the sampler sees our constraints: a feasible
    trial dominates an infeasible one whatever their objectives."""
    from optuna.samplers.nsgaii._constraints_evaluation import _constrained_dominates

    s = searcher("macs_ratio<=0.25")
    for trial_id in "ab":
        s.suggest(trial_id)
    s.on_trial_complete("a", final(0.99, 0.3))  # better on both objectives, over budget
    s.on_trial_complete("b", final(0.5, 0.2))
    over, within = s._ot_study.trials
    directions = s._ot_study.directions
    assert _constrained_dominates(within, over, directions)
    assert not _constrained_dominates(over, within, directions)


def test_replay_search_hands_out_each_config_once_and_survives_a_restart(
        tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    from autoprune.search.searcher import ReplaySearch

    configs = [{"method": "dense", "_proxy_run_id": "r1"},
               {"method": "filter", "filter.target_ratio": 0.5, "_proxy_run_id": "r2"}]
    first = ReplaySearch(configs)
    assert first.suggest("x") == configs[0]
    first.on_trial_complete("x", final(0.9, 0.5))  # nothing is learnt in stage 2
    first.save(str(tmp_path / "state.pkl"))
    second = pickle.loads(pickle.dumps(ReplaySearch([])))
    second.restore(str(tmp_path / "state.pkl"))
    assert second.suggest("x") == configs[0]  # a restarted trial gets its own config
    assert second.suggest("y") == configs[1]
    assert second.suggest("z") == Searcher.FINISHED


# --- targets ---------------------------------------------------------------------------------


def test_targets_parse_and_measure_violations() -> None:
    target = parse_target("macs_ratio<=0.25, params<=50k")
    assert target is not None and str(target) == "macs_ratio<=0.25,params<=50000"
    row = {"macs_ratio": 0.2, "params": 60_000}
    assert target.violations(row) == {"macs_ratio": pytest.approx(-0.2),
                                      "params": pytest.approx(0.2)}
    assert not target.fits(row) and target.fits({"macs_ratio": 0.25, "params": 1})
    assert target.violations({"macs_ratio": float("nan"), "params": 1})["macs_ratio"] > 1e3
    assert parse_target(None) is None and parse_target(" ") is None


@pytest.mark.parametrize(("text", "words"), [
    ("macs_ratio>=0.25", "cannot read 'macs_ratio>=0.25'"),
    ("accuracy<=0.9", "unknown metric 'accuracy'"),
    ("macs_ratio<=0.2k", "plain number"),
    ("macs<=0", "must be positive"),
    ("macs<=4M,macs<=5M", "bounded twice"),
])
def test_bad_targets_are_one_line_errors(text: str, words: str) -> None:
    with pytest.raises(UserError) as err:
        parse_target(text)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_space_file_may_hold_the_target() -> None:
    assert str(space(target="latency_ms<=2").target) == "latency_ms<=2"
    with pytest.raises(ConfigError, match="target: unknown metric"):
        space(target="speed<=2")


# --- validation chooses, test reports, also for searches logged before -------------------


def test_pick_and_pareto_read_a_search_logged_before_validation_accuracy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, ``accuracy`` was test accuracy and ``val_accuracy`` the last epoch's: pick
    chooses on the latter, prints the former as test_accuracy, and says so."""
    import json

    from _mlflow import search_store

    from autoprune.cli import main

    trials = [("a", "completed", {"accuracy": 0.95, "val_accuracy": 0.80, "macs": 10.0,
                                  "macs_ratio": 0.1}),
              ("b", "completed", {"accuracy": 0.90, "val_accuracy": 0.85, "macs": 10.0,
                                  "macs_ratio": 0.1})]
    uri = search_store(tmp_path, trials, config=True, legacy=True)
    assert main(["pick", "--experiment", "s", "--tracking-uri", uri,
                 "--max-macs-ratio", "0.5"]) == 0
    out, err = capsys.readouterr()
    picked = json.loads(out)
    assert picked["trial_id"] == "b"  # the better validation accuracy, not test's 0.95
    assert picked["val_accuracy"] == 0.85 and picked["test_accuracy"] == 0.90
    assert "logged before autoprune chose on validation accuracy" in err
    assert main(["pareto", "--experiment", "s", "--tracking-uri", uri]) == 0
    assert "note: this search was logged before" in capsys.readouterr().out


def test_a_bare_pick_needs_a_target_or_a_budget(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from _mlflow import search_store

    from autoprune.cli import main

    trials = [("a", "completed", {"accuracy": 0.9, "macs": 10.0, "macs_ratio": 0.5}),
              ("b", "completed", {"accuracy": 0.8, "macs": 4.0, "macs_ratio": 0.2})]
    plain = search_store(tmp_path / "plain", trials, config=True)
    assert main(["pick", "--experiment", "s", "--tracking-uri", plain]) == 2
    assert "--target" in capsys.readouterr().err
    aimed = search_store(tmp_path / "aimed", trials, config=True,
                         tags={"autoprune.target": "macs_ratio<=0.25"})
    assert main(["pick", "--experiment", "s", "--tracking-uri", aimed]) == 0
    import json

    picked = json.loads(capsys.readouterr().out)
    assert picked["trial_id"] == "b" and picked["budget"] == "--target macs_ratio<=0.25"
    # an explicit budget flag still wins over the target
    assert main(["pick", "--experiment", "s", "--tracking-uri", aimed,
                 "--max-macs-ratio", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["trial_id"] == "a"


def test_pareto_csv_has_both_accuracies(tmp_path: Path) -> None:
    import csv

    from autoprune.search.pareto import write_csv

    write_csv([{"trial_id": "a", "accuracy": 0.8, "val_accuracy": 0.8, "test_accuracy": 0.79,
                "macs": 1.0}], tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as fh:
        row = next(csv.DictReader(fh))
    assert row["val_accuracy"] == "0.8" and row["test_accuracy"] == "0.79"


def test_proxy_trials_never_enter_the_front_rows(tmp_path: Path) -> None:
    from _mlflow import search_store

    from autoprune.search.store import load_search

    uri = search_store(tmp_path, [("a", "completed", {"accuracy": 0.9, "macs": 1.0})])
    from autoprune.search.store import open_client

    client = open_client(uri)
    record = load_search(uri, "s")
    proxy = client.create_run(record.lookup.experiment_id, tags={
        "autoprune.role": "trial", "mlflow.parentRunId": record.parent.info.run_id,
        "autoprune.trial_id": "p", "autoprune.status": "completed",
        "autoprune.fidelity": "proxy"}).info.run_id
    client.log_metric(proxy, "accuracy", 0.99)
    client.log_metric(proxy, "macs", 0.5)
    rows_now = load_search(uri, "s").rows
    assert [r["trial_id"] for r in rows_now] == ["a"]


def test_config_errors_stay_config_errors() -> None:
    with pytest.raises(ConfigError):
        parse_two_stage("front")
