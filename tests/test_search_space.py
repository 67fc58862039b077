"""Search spaces: validation names the key; define-by-run yields valid train configs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from autoprune.config import ConfigError, parse_train_config
from autoprune.methods import list_methods
from autoprune.search.sampling import DefineByRun, flatten, train_config_dict
from autoprune.search.space import load_space, parse_space

SPACES = sorted((Path(__file__).resolve().parent.parent / "search_spaces").glob("*.yaml"))

BASE: dict[str, Any] = {
    "num_samples": 4,
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": 4, "batch_size": 64, "lr": 0.05, "seed": 0}},
    "searched": {
        "training": {"lr": {"low": 0.01, "high": 0.1, "log": True}},
        "methods": {
            "dense": {},
            "filter": {"target_ratio": {"low": 0.2, "high": 0.8},
                       "criterion": {"choices": ["l1", "random"]},
                       "start_epoch": {"low": 1, "high": 2}, "end_epoch": 3},
        },
    },
}


def space_with(path: str, value: Any) -> dict[str, Any]:
    """BASE with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last)
    else:
        node[last] = value
    return data


def test_base_space_is_valid() -> None:
    space = parse_space(BASE)
    assert list(space.methods) == ["dense", "filter"]
    assert space.objectives == ("accuracy", "macs") and space.modes == ("max", "min")
    kinds = {s.name: s.kind for s in space.methods["filter"]}
    assert kinds == {"filter.target_ratio": "float", "filter.criterion": "categorical",
                     "filter.start_epoch": "int", "filter.end_epoch": "fixed"}


@pytest.mark.parametrize(("path", "value", "key"), [
    ("searched.methods.nosuch", {}, "searched.methods.nosuch"),
    ("searched.methods.filter.nosuch", 1, "searched.methods.filter.nosuch"),
    ("searched.methods.filter.criterion", {"choices": []}, "searched.methods.filter.criterion"),
    ("searched.methods.filter.criterion", {"choices": ["l1", "l7"]},
     "searched.methods.filter.criterion.choices[1]"),
    ("searched.methods.filter.target_ratio", {"low": 0.9, "high": 0.1},
     "searched.methods.filter.target_ratio"),
    ("searched.methods.filter.start_epoch", {"low": 1.5, "high": 2},
     "searched.methods.filter.start_epoch.low"),
    ("searched.methods.filter.criterion", {"low": 0, "high": 1},
     "searched.methods.filter.criterion"),
    ("searched.training.lr", {"low": 0.0, "high": 0.1, "log": True}, "searched.training.lr"),
    ("searched.training.nosuch", 1, "searched.training.nosuch"),
    ("sampler", "annealing", "sampler"),
    ("sampler_options", {"nsga2": {"population": 4}}, "sampler_options.nsga2.population"),
    ("sampler_options", {"nsga2": {"population_size": 1}}, "sampler_options.nsga2"),
    ("objectives", ["accuracy", "flops"], "objectives[1]"),
    ("objectives", [], "objectives"),
    ("num_samples", 0, "num_samples"),
    ("resources", {"cpu": 0}, "resources.cpu"),
    ("nosuch", 1, "nosuch"),
    ("fixed.model", "resnet9000", "fixed: unknown model"),
    ("fixed.training.epochs", 0, "fixed: training.epochs"),
    ("fixed.method", "filter", "fixed.method"),
    ("searched.methods", {}, "searched.methods"),
    ("searched.methods.filter.end_epoch", 9, "searched.methods.filter"),
])
def test_validation_error_names_the_key(path: str, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space(space_with(path, value))
    assert key in str(info.value), str(info.value)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_space_is_valid(path: Path) -> None:
    """Every shipped file loads and validates (methods still being written are skipped)."""
    data = yaml.safe_load(path.read_text())
    missing = [m for m in data["searched"]["methods"] if m not in list_methods()]
    for name in missing:
        del data["searched"]["methods"][name]
    space = parse_space(data, source=path.read_text())
    assert space.num_samples >= 1 and space.methods
    if missing:
        pytest.skip(f"validated without unregistered methods: {', '.join(missing)}")


def test_quickstart_is_small_and_offline() -> None:
    space = load_space(SPACES[0].parent / "quickstart.yaml")
    assert space.num_samples >= 12
    assert space.fixed["dataset"]["name"] == "digits"
    assert space.fixed["model"] in ("small_cnn", "small_resnet")
    assert {"dense", "prune_retrain", "filter"} <= set(space.methods)


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_define_by_run_configs_parse_for_every_method(path: Path) -> None:
    """Sampling each method of each shipped space gives configs the engine accepts."""
    data = yaml.safe_load(path.read_text())
    data["searched"]["methods"] = {
        m: v for m, v in data["searched"]["methods"].items() if m in list_methods()}
    space = parse_space(data)
    for method, specs in space.methods.items():
        only = DefineByRun(dataclasses.replace(space, methods={method: specs}))
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(8):
            flat = only(study.ask())
            config = parse_train_config(train_config_dict(space.fixed, flat))
            assert config.method == method
            searched = {s.name.split(".", 1)[1] for s in specs}
            assert searched <= set(config.method_params)


def test_define_by_run_names_params_per_method() -> None:
    space = parse_space(BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        flat = DefineByRun(space)(trial)
        seen.add(flat["method"])
        assert set(trial.params) <= set(flat)
        if flat["method"] == "filter":
            assert flat["filter.end_epoch"] == 3 and "filter.end_epoch" not in trial.params
            assert 0.2 <= flat["filter.target_ratio"] <= 0.8
        study.tell(trial, 0.0)
    assert seen == {"dense", "filter"}


def test_train_config_dict_and_flatten() -> None:
    fixed = parse_space(BASE).fixed
    flat = {"method": "filter", "filter.target_ratio": 0.5, "training.lr": 0.02}
    nested = train_config_dict(fixed, flat)
    assert nested["method_params"] == {"target_ratio": 0.5}
    assert nested["training"]["lr"] == 0.02 and nested["training"]["epochs"] == 4
    assert fixed["training"]["lr"] == 0.05  # the fixed part is not modified
    assert flatten({"a": {"b": 1, "c": {}}, "d": 2}) == {"a.b": 1, "a.c": {}, "d": 2}
    with pytest.raises(ConfigError, match="nosuch.x"):
        train_config_dict(fixed, {"method": "filter", "nosuch.x": 1})
