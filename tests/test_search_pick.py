"""``autoprune pick`` / ``pareto`` against a small MLflow store written directly by the test."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.search.pick import Budget, choose, parse_count, ui_command

# (trial, status, accuracy, macs, params); dense MACs are 1000.
TRIALS = [
    ("t0", "completed", 0.95, 1000.0, 500.0),
    ("t1", "completed", 0.93, 400.0, 150.0),
    ("t2", "completed", 0.90, 200.0, 120.0),
    ("t3", "completed", 0.80, 100.0, 40.0),
    ("t4", "completed", 0.89, 300.0, 100.0),   # dominated by t2
    ("t5", "failed", 0.99, 10.0, 5.0),          # failed: never picked
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An MLflow SQLite store holding one search, as the tracking callback writes it."""
    from _mlflow import search_store

    trials = [(trial, status, {"accuracy": acc, "macs": macs, "params": params,
                               "macs_ratio": macs / 1000.0})
              for trial, status, acc, macs, params in TRIALS]
    return search_store(tmp_path_factory.mktemp("mlflow"), trials, step=3, config=True)


def pick(uri: str, *flags: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = main(["pick", "--experiment", "s", "--tracking-uri", uri, *flags])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.mark.parametrize(("flags", "trial"), [
    (("--max-macs", "450"), "t1"),
    (("--max-macs", "0.25K"), "t2"),
    (("--max-macs-ratio", "0.3"), "t2"),
    (("--max-macs-ratio", "0.15"), "t3"),
    (("--max-params", "130"), "t2"),
    (("--min-accuracy", "0.9"), "t2"),
    (("--min-accuracy", "0.94"), "t0"),
    (("--max-macs", "1e9"), "t0"),
])
def test_pick_most_accurate_within_budget(store: str, flags: tuple[str, ...], trial: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, picked, _ = pick(store, *flags, capsys=capsys)
    assert code == 0
    assert picked["trial_id"] == trial
    assert {"run_id", "accuracy", "macs", "params", "config"} <= set(picked)
    assert picked["config"]["method"] == "filter"


@pytest.mark.parametrize(("flags", "words"), [
    (("--max-macs", "50"), ["--max-macs 50", "macs 100", "0.8000"]),
    (("--max-params", "10"), ["--max-params 10", "params 40"]),
    (("--min-accuracy", "0.97"), ["--min-accuracy 0.97", "accuracy 0.9500"]),
])
def test_pick_no_trial_fits(store: str, flags: tuple[str, ...], words: list[str],
                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = pick(store, *flags, capsys=capsys)
    assert code == 2
    assert err.startswith("error: no completed trial meets") and err.count("\n") == 1
    for word in words:
        assert word in err


def test_pick_writes_a_replayable_config(store: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from autoprune.config import load_train_config

    out = tmp_path / "picked.yaml"
    code, picked, _ = pick(store, "--max-macs", "450", "--out", str(out), capsys=capsys)
    assert code == 0 and picked["config_file"] == str(out)
    assert load_train_config(out).method == "filter"


def test_pick_and_pareto_user_errors(store: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pick", "--experiment", "nope", "--tracking-uri", store, "--max-macs", "1"]) == 2
    assert "no search named 'nope'" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["pareto", "--experiment", "s", "--tracking-uri", missing]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert main(["pick", "--experiment", "s", "--tracking-uri", store, "--max-macs", "lots"]) == 2
    assert "--max-macs must be a number" in capsys.readouterr().err
    assert main(["pick", "--experiment", "s", "--tracking-uri", store]) == 2  # no budget


def test_pareto_prints_the_front(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pareto", "--experiment", "s", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if re.match(r"t\d ", line)]
    assert listed == ["t3", "t2", "t1", "t0"]  # t4 is dominated, t5 failed; cheapest first


def test_budget_and_choose_units() -> None:
    assert parse_count("40M", "--max-macs") == 4e7
    assert parse_count("1.5e3", "--max-macs") == 1500
    with pytest.raises(UserError):
        parse_count("-1", "--max-macs")
    rows = [{"accuracy": 0.9, "macs": 10.0}, {"accuracy": 0.9, "macs": 5.0}]
    assert choose(rows, Budget("--max-macs", "macs", 10))["macs"] == 5.0  # ties: cheaper
    with pytest.raises(UserError, match="no completed trial yet"):
        choose([], Budget("--max-macs", "macs", 10))


def test_ui_command_binds_localhost() -> None:
    cmd = ui_command("sqlite:////x/mlflow.db", "127.0.0.1", 5000)
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////x/mlflow.db"


def test_ui_runs_without_mlflows_job_runner_unless_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from autoprune.search.pick import ui_env

    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    assert ui_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # the user's choice wins
    assert ui_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
