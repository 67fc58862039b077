"""The engine end to end on the bundled digits data: summary contract, speed-up, resume."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

import autoprune
from autoprune.config import parse_train_config
from autoprune.engine import TrainingDiverged, train
from autoprune.methods import PruningMethod
from autoprune.methods import base as methods_base

SUMMARY_KEYS = {
    "accuracy", "macs", "params", "dense_macs", "dense_params", "train_flops",
    "dense_train_flops", "wall_time_s", "epochs", "config", "latency_ms",
}
EPOCH_KEYS = {"epoch", "accuracy", "macs", "params", "train_flops", "time_s"}


def filter_config(**training) -> dict:
    return {
        "model": "cifar_resnet20",
        "dataset": "digits",
        "training": {"epochs": 5, "batch_size": 64, "lr": 0.05, "seed": 0, **training},
        "method": "filter",
        "method_params": {"criterion": "l1", "target_ratio": 0.8, "start_epoch": 2,
                          "end_epoch": 3, "frequency": 1},
    }


@pytest.fixture(scope="module")
def filter_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("filter_run")
    summary = train(parse_train_config(filter_config()), out, progress=False)
    return out, summary


def test_filter_run_writes_a_complete_summary(filter_run) -> None:
    out, summary = filter_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk) >= SUMMARY_KEYS
    assert 0.0 <= on_disk["accuracy"] <= 1.0
    assert len(on_disk["epochs"]) == 5
    for record in on_disk["epochs"]:
        assert set(record) >= EPOCH_KEYS
    assert on_disk["config"]["method"] == "filter"
    assert parse_train_config(on_disk["config"]) == parse_train_config(filter_config())


def test_filter_run_cuts_compute(filter_run) -> None:
    _, s = filter_run
    assert s["macs"] <= 0.1 * s["dense_macs"]
    assert s["params"] < 0.1 * s["dense_params"]
    assert s["train_flops"] < s["dense_train_flops"]
    flops = [e["train_flops"] for e in s["epochs"]]
    increments = [b - a for a, b in zip([0.0, *flops], flops)]
    assert increments[-1] < 0.1 * increments[0]  # later epochs are cheaper, as counted
    assert s["accuracy"] > 0.5  # it still learns (10 classes: chance is 0.1)


def test_epoch_compute_falls_as_the_network_shrinks(filter_run) -> None:
    """Counted, not timed (wall time on a shared machine says little: the speed-up is
    measured as ratios in benchmarks/pruned_training_speed.py)."""
    _, s = filter_run
    cumulative = [0.0] + [e["train_flops"] for e in s["epochs"]]
    per_epoch = [b - a for a, b in zip(cumulative, cumulative[1:])]
    dense, pruned = per_epoch[:2], per_epoch[3:]  # epochs 1-2 dense; pruned to 0.8 after 3
    assert statistics.mean(pruned) < 0.8 * statistics.mean(dense), per_epoch


def test_final_model_reloads_and_runs(filter_run) -> None:
    out, s = filter_run
    model = autoprune.load_model(out / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == s["params"]
    with torch.no_grad():
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_in_its_pruned_shape(tmp_path) -> None:
    config = parse_train_config(
        {**filter_config(epochs=4), "dataset": {"name": "digits", "train_subset": 300}}
    )
    reference = train(config, tmp_path / "ref", progress=False)

    def crash_after_epoch_3(record: dict, _out) -> None:
        if record["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "run", on_epoch=crash_after_epoch_3, progress=False)
    resumed_epochs = []
    summary = train(config, tmp_path / "run", progress=False,
                    on_epoch=lambda r, _o: resumed_epochs.append(r["epoch"]))
    assert resumed_epochs == [4]  # epochs 1-3 were not trained again
    assert [e["macs"] for e in summary["epochs"]] == [e["macs"] for e in reference["epochs"]]
    assert summary["accuracy"] == pytest.approx(reference["accuracy"], abs=1e-9)
    assert summary["train_flops"] == pytest.approx(reference["train_flops"])


class NanAtEpoch2(PruningMethod):
    """Test-only method whose extra loss turns NaN in epoch 2."""

    name = "test_nan_at_epoch_2"

    def loss_term(self, ctx):
        return torch.tensor(float("nan")) if ctx.epoch == 2 else None


def test_diverging_loss_stops_the_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(methods_base._METHODS, NanAtEpoch2.name, NanAtEpoch2)
    config = parse_train_config({
        "model": "small_cnn", "dataset": {"name": "digits", "train_subset": 200},
        "training": {"epochs": 3, "batch_size": 50}, "method": NanAtEpoch2.name,
    })
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2"):
        train(config, tmp_path, progress=False)
    assert not (tmp_path / "summary.json").exists()


def test_a_checkpoint_from_before_a_new_setting_still_resumes(tmp_path) -> None:
    """A checkpoint records its run's config; one written before a setting existed (here
    ``training.precision``) is that setting at its default, not another run."""
    import json

    from autoprune.config import parse_train_config
    from autoprune.engine.loop import _check_same_run
    from autoprune.errors import UserError

    config = parse_train_config({"model": "small_cnn", "dataset": "digits",
                                 "training": {"epochs": 3}, "method": "dense"})
    old = config.to_dict()
    del old["training"]["precision"]
    _check_same_run(json.dumps(old), config, tmp_path / "checkpoint.pt")  # no error
    old["training"]["epochs"] = 2
    with pytest.raises(UserError, match="training.epochs: 2 -> 3"):
        _check_same_run(json.dumps(old), config, tmp_path / "checkpoint.pt")
