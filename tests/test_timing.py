"""Schedules keep their meaning at another epoch budget (methods/timing.py, config)."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from autoprune.config import at_budget, parse_train_config
from autoprune.errors import ConfigError
from autoprune.methods import get_method, list_methods
from autoprune.methods.timing import epoch_fields, fit_boundaries, rescale


def config(method: str, params: dict, epochs: int = 6, **training) -> dict:
    return {"model": "small_cnn", "dataset": "digits", "method": method,
            "method_params": params, "training": {"epochs": epochs, **training}}


def test_filter_schedule_stretches_with_the_budget() -> None:
    raw = config("filter", {"start_epoch": 2, "end_epoch": 3, "frequency": 1})
    scaled, changes = parse_train_config(at_budget(raw, epochs=12)).schedule()
    assert (scaled["start_epoch"], scaled["end_epoch"], scaled["frequency"]) == (4, 6, 2)
    assert changes == {"start_epoch": (2, 4), "end_epoch": (3, 6), "frequency": (1, 2)}
    shrunk, _ = parse_train_config(at_budget(raw, epochs=3)).schedule()
    assert (shrunk["start_epoch"], shrunk["end_epoch"]) == (1, 2)


def test_same_budget_changes_nothing_and_old_configs_keep_working() -> None:
    raw = config("filter", {"start_epoch": 2, "end_epoch": 3})
    parsed = parse_train_config(raw)
    assert parsed.training.schedule_epochs is None
    params, changes = parsed.schedule()
    assert changes == {} and params["start_epoch"] == 2 and params["end_epoch"] == 3


def test_too_small_a_budget_is_a_config_error_naming_the_phases() -> None:
    raw = config("filter", {"start_epoch": 2, "end_epoch": 3})
    with pytest.raises(ConfigError, match=r"does not fit in 2 epochs.*3 phases"):
        parse_train_config(at_budget(raw, epochs=2))


def test_automatic_values_are_resolved_before_rescaling() -> None:
    # cgap's defaults: growth until a third, pruning until two thirds of the epochs
    params, _ = parse_train_config(at_budget(config("cgap", {}, epochs=9), epochs=18)).schedule()
    assert (params["growth_end_epoch"], params["prune_start_epoch"],
            params["prune_end_epoch"]) == (6, 8, 12)


@pytest.mark.parametrize(("method", "params", "field", "expected"), [
    ("prune_retrain", {"retrain_epochs": 2}, "retrain_epochs", 4),   # counted from the end
    ("variational", {"start_epoch": 3}, "start_epoch", 5),           # gates act from epoch 5
    ("activation_density", {"start_epoch": 2, "interval": 2}, "interval", 4),
    ("hfp", {"end_epoch": 5}, "end_epoch", 10),
])
def test_each_kind_of_epoch_field(method: str, params: dict, field: str, expected: int) -> None:
    scaled, _ = parse_train_config(at_budget(config(method, params), epochs=12)).schedule()
    assert scaled[field] == expected


def test_cgap_growth_interval_stays_within_growth() -> None:
    raw = config("cgap", {"growth_end_epoch": 2, "growth_interval": 2, "prune_start_epoch": 3,
                          "prune_end_epoch": 5}, epochs=8)
    scaled, _ = parse_train_config(at_budget(raw, epochs=4)).schedule()
    assert scaled["growth_interval"] <= scaled["growth_end_epoch"]
    assert scaled["growth_end_epoch"] < scaled["prune_start_epoch"] <= scaled["prune_end_epoch"]


def test_every_method_declares_its_epoch_fields() -> None:
    """An int parameter that counts epochs must be declared, or --epochs would miss it."""
    for name in list_methods():
        declared = epoch_fields(get_method(name).Params)
        for f in dataclasses.fields(get_method(name).Params):
            counts_epochs = "epoch" in f.name or f.name in ("frequency", "interval")
            if counts_epochs or f.name.endswith("_interval") or f.name.endswith("_frequency"):
                assert f.name in declared, f"{name}.{f.name} is not an epoch_field"


def test_fit_boundaries_keeps_order_distinctness_and_proportion() -> None:
    rng = random.Random(0)
    for _ in range(500):
        old = rng.randint(2, 40)
        inner = sorted(rng.sample(range(1, old), rng.randint(0, min(5, old - 1))))
        bounds = [0, *inner, old]
        for new in range(len(bounds) - 1, 60):
            moved = [fit_boundaries(bounds, old, new)[b] for b in bounds]
            assert moved[0] == 0 and moved[-1] == new
            assert all(a < b for a, b in zip(moved, moved[1:]))
            for b, q in zip(bounds, moved):  # within one epoch of proportional, unless pushed
                if new >= 3 * len(bounds):
                    assert abs(q - b * new / old) <= len(bounds)
        with pytest.raises(ValueError):
            fit_boundaries(bounds, old, len(bounds) - 2)


def test_rescaled_schedules_are_valid_and_round_trip() -> None:
    """Any valid filter / cgap schedule, rescaled to a feasible budget, validates there, and
    rescaling to the original budget from the original config is the identity."""
    cases = itertools.product((1, 2, 3), (3, 4, 5), (1, 2))
    for start, end, freq in cases:
        raw = config("filter", {"start_epoch": start, "end_epoch": end, "frequency": freq})
        params = get_method("filter").parse_params(raw["method_params"], 6)
        for new in range(3, 30):
            scaled, _ = rescale(params, 6, new)
            scaled.validate(new)
            assert scaled.start_epoch <= scaled.end_epoch
            assert (scaled.start_epoch == scaled.end_epoch) == (start == end)
        assert rescale(params, 6, 6)[0] == params


def test_schedule_epochs_is_validated() -> None:
    with pytest.raises(ConfigError, match="training.schedule_epochs"):
        parse_train_config(config("filter", {}, schedule_epochs=0))
