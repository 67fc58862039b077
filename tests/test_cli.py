"""Command line: listings, a real `autoprune train`, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoprune.cli import main

GOOD = {
    "model": "small_cnn",
    "dataset": {"name": "digits", "train_subset": 200},
    "training": {"epochs": 2, "batch_size": 50, "lr": 0.05, "seed": 1},
    "method": "filter",
    "method_params": {"target_ratio": 0.5, "start_epoch": 1, "end_epoch": 1},
}


def write(tmp_path: Path, data: object, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_(path: str, value: object) -> dict:
    """GOOD with one dotted key set (or removed when value is ...)."""
    data = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def test_listing_commands(capsys) -> None:
    assert main(["models", "cifar_resnet*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "prune", "grow", "layers"]
    assert [line.split()[0] for line in lines[1:-1]] == [
        "cifar_resnet110", "cifar_resnet20", "cifar_resnet32", "cifar_resnet56"]
    assert all(line.split()[1:4] == ["yes", "yes", "yes"] for line in lines[1:-1])
    assert main(["models"]) == 0
    rows = {line.split()[0]: line.split()[1:4] for line in capsys.readouterr().out.splitlines()}
    assert {"resnet18", "mobilenet_v2", "densenet121", "small_cnn"} <= set(rows)
    assert rows["densenet121"] == ["yes", "-", "-"]  # concatenations: prune only
    assert rows["resnext50_32x4d"] == ["yes", "-", "yes"]  # grouped convs do not grow
    assert rows["shufflenet_v2_x0_5"] == ["-", "-", "-"]  # trains dense only
    assert main(["models", "nothing_like_this*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err
    assert main(["methods"]) == 0
    assert "filter: criterion='l1'" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    assert "digits" in capsys.readouterr().out.split()


def test_train_command_end_to_end(tmp_path) -> None:
    config = write(tmp_path, GOOD)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", "train", str(config), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs"] < summary["dense_macs"]
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()


BAD_CONFIGS = [
    (with_("model", "resnet9000"), "unknown model 'resnet9000'"),
    (with_("dataset", "imagenet21k"), "unknown dataset.name"),
    (with_("method", "magic"), "unknown method 'magic'"),
    (with_("training.lr", -1), "training.lr"),
    (with_("training.epochs", "ten"), "training.epochs must be an integer"),
    (with_("training.optimiser", "sgd"), "unknown key 'training.optimiser'"),
    (with_("method_params.target_ratio", 1.2), "method_params.target_ratio"),
    (with_("method_params.end_epoch", 7), "method_params.end_epoch"),
    (with_("method_params.criterion", "l7"), "method_params.criterion"),
    (with_("dataset.train_subset", 0), "dataset.train_subset"),
    ({**GOOD, "extra": 1}, "unknown key 'extra'"),
    (with_("model", ...), "missing required key 'model'"),
    ("model: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CONFIGS)
def test_bad_train_configs_end_in_one_line_and_exit_2(tmp_path, capsys, data, message) -> None:
    code = main(["train", str(write(tmp_path, data)), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "o" / "checkpoint.pt").exists()  # nothing trained


def test_missing_config_file_and_bad_flags(tmp_path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_missing_data_offline_is_one_line(tmp_path) -> None:
    config = write(tmp_path, with_("dataset", {"name": "cifar10", "data_dir": str(tmp_path)}))
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", "train", str(config), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "cifar10" in proc.stderr


SIX_EPOCHS = {**GOOD, "training": {**GOOD["training"], "epochs": 6},
              "method_params": {"target_ratio": 0.5, "start_epoch": 2, "end_epoch": 3}}


def test_train_replays_the_schedule_at_another_budget(tmp_path, capsys) -> None:
    """--epochs 12 on a 6-epoch schedule prunes after epochs 4 and 6, not 2 and 3."""
    config = write(tmp_path, SIX_EPOCHS)
    out = tmp_path / "out"
    assert main(["train", str(config), "--out", str(out), "--quiet", "--epochs", "12",
                 "--train-subset", "150"]) == 0
    assert "start_epoch 2 -> 4" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["epochs"]) == 12
    assert summary["schedule"]["method_params"]["start_epoch"] == 4
    assert summary["schedule"]["rescaled"]["end_epoch"] == {"written": 3, "used": 6}
    macs = [e["macs"] for e in summary["epochs"]]
    changed = [e["epoch"] for e, before in zip(summary["epochs"][1:], macs) if e["macs"] < before]
    assert changed == [4, 6]  # the two pruning steps, where 1/3 and 1/2 of training end
    assert summary["config"]["training"]["schedule_epochs"] == 6  # written as given
    assert summary["config"]["dataset"]["train_subset"] == 150
    # the resolved config replays as it says: same budget again, nothing rescaled twice
    again = write(tmp_path, summary["config"], "again.yaml")
    assert main(["train", str(again), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    replay = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert replay["schedule"]["method_params"] == summary["schedule"]["method_params"]


def test_a_diverging_run_ends_in_one_line_naming_the_epoch_and_the_lr(tmp_path,
                                                                       capsys) -> None:
    config = write(tmp_path, {"model": "small_cnn", "dataset": "digits", "method": "dense",
                              "training": {"epochs": 3, "batch_size": 64, "lr": 1000.0}})
    assert main(["train", str(config), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged") and err.count("\n") == 1, err
    assert "at epoch" in err and "lower training.lr (now 1000)" in err


def test_a_budget_too_small_for_the_schedule_is_one_line(tmp_path, capsys) -> None:
    config = write(tmp_path, SIX_EPOCHS)
    assert main(["train", str(config), "--out", str(tmp_path / "o"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "does not fit in 2 epochs" in err and "at least 3 epochs" in err
    assert main(["train", str(config), "--epochs", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tmp_path, capsys) -> None:
    config = write(tmp_path, GOOD)
    out = str(tmp_path / "o")
    assert main(["train", str(config), "--out", out, "--quiet"]) == 0
    assert main(["train", str(config), "--out", out, "--quiet", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint of another run (training.epochs: 2 -> 3)" in err and "--fresh" in err
    assert main(["train", str(config), "--out", out, "--quiet", "--epochs", "3",
                 "--fresh"]) == 0


def test_mlflow_tracking_uri_is_honoured_after_the_flag(tmp_path, capsys, monkeypatch) -> None:
    """Flag, then MLflow's own MLFLOW_TRACKING_URI, then the embedded default; every
    command that talks to MLflow says once on stderr when the variable chose the store."""
    from autoprune.search.store import DEFAULT_DB, resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{(tmp_path / DEFAULT_DB).resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env/store.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'env' / 'store.db'}"
    assert resolve_tracking_uri("sqlite:///flag.db") == f"sqlite:///{tmp_path / 'flag.db'}"
    assert main(["pareto", "--experiment", "nothing-here"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "MLflow: sqlite:///env/store.db (from MLFLOW_TRACKING_URI)", err
    assert err[1] == f"error: no MLflow store at sqlite:///{tmp_path / 'env' / 'store.db'} " \
                     "(run a search first, or pass --tracking-uri)", err
    # MLflow's own setter exports the variable; autoprune's use of it leaves it as it was
    from autoprune.deploy.mlflow_model import tracking

    with tracking(f"sqlite:///{tmp_path / 'other.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///env/store.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking(f"sqlite:///{tmp_path / 'other.db'}"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://x")
    assert main(["pareto", "--experiment", "x"]) == 2
    assert "error: MLFLOW_TRACKING_URI 'ftp://x': not a tracking store" in capsys.readouterr().err
