"""End to end: multi-objective successive halving in real searches (local Ray, MLflow)."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoprune.cli import main

pytestmark = pytest.mark.slow

EPOCHS, SAMPLES = 6, 4
SPACE: dict[str, Any] = {
    # population = num_samples: NSGA-II's first generation is drawn at random from the
    # seed, so a search with and one without the TrialScheduler train the same schedules;
    # one trial at a time: the promotions do not depend on which trial ends first
    "num_samples": SAMPLES, "sampler": "nsga2", "seed": 0, "max_concurrent": 1,
    "sampler_options": {"nsga2": {"population_size": SAMPLES}},
    "objectives": ["accuracy", "macs"], "resources": {"cpu": 1},
    "scheduler": {"name": "none", "min_epochs": 2, "reduction_factor": 3},
    "fixed": {"model": "small_cnn", "dataset": "digits",
              "training": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.05, "seed": 0}},
    "searched": {"methods": {
        "dense": {},
        "filter": {"target_ratio": {"low": 0.3, "high": 0.95}, "start_epoch": 1,
                   "end_epoch": EPOCHS},
        "prune_retrain": {"target_ratio": {"low": 0.3, "high": 0.95},
                          "retrain_epochs": {"low": 1, "high": 4}},
        "hfp": {"target_macs_ratio": {"low": 0.1, "high": 0.8}, "end_epoch": EPOCHS},
    }},
}


def search(folder: Path, name: str, *flags: str) -> int:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return main(["search", str(path), "--name", name, "--tracking-uri", uri(folder),
                 "--storage-path", str(folder / "ray"), *flags])


def uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def runs_of(folder: Path, name: str) -> tuple[Any, list[Any], Any]:
    from autoprune.search.store import RunLookup, open_client

    client = open_client(uri(folder))
    experiment = client.get_experiment_by_name(name)
    lookup = RunLookup(client, experiment.experiment_id)
    return lookup.parent(), lookup.children(), client


@pytest.fixture(scope="module")
def searches(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("moasha")
    codes = {"moasha": search(folder, "mo", "--scheduler", "moasha"),
             "full": search(folder, "full")}
    return {"folder": folder, "codes": codes}


def test_both_searches_complete(searches: dict[str, Any]) -> None:
    assert searches["codes"] == {"moasha": 0, "full": 0}


def test_some_trials_are_pruned_at_the_lower_rung(searches: dict[str, Any]) -> None:
    _, children, client = runs_of(searches["folder"], "mo")
    status = [c.data.tags["autoprune.status"] for c in children]
    assert len(children) == SAMPLES and "pruned" in status and "completed" in status
    for child in children:
        metrics = child.data.metrics
        if child.data.tags["autoprune.status"] == "pruned":
            assert metrics["epochs"] == 2 and metrics["rung"] == 0
            assert metrics["trial_train_flops"] == pytest.approx(metrics["train_flops"])
            assert child.info.status == "FINISHED"
        else:
            assert metrics["epochs"] == EPOCHS
            assert metrics["trial_train_flops"] > metrics["train_flops"]  # rung 0 + full run
            assert "rung0/accuracy" in metrics
        history = client.get_metric_history(child.info.run_id, "rung")
        steps = sorted({m.step for m in history})  # one step per epoch, over all rungs
        if child.data.tags["autoprune.status"] == "completed":
            assert steps == list(range(1, 2 + EPOCHS + 1))  # rung 0: 2 epochs, then the full run
            assert {m.value for m in history if m.step > 2} == {1.0}


def test_front_and_pick_use_full_fidelity_trials_only(searches: dict[str, Any],
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = searches["folder"]
    parent, children, client = runs_of(folder, "mo")
    pruned = {c.data.tags["autoprune.trial_id"] for c in children
              if c.data.tags["autoprune.status"] == "pruned"}
    path = client.download_artifacts(parent.info.run_id, "pareto.csv", str(tmp_path))
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    assert rows and all(float(r["epochs"]) == EPOCHS for r in rows)
    assert not pruned & {r["trial_id"] for r in rows}
    capsys.readouterr()
    assert main(["pick", "--experiment", "mo", "--tracking-uri", uri(folder),
                 "--min-accuracy", "0", "--out", str(tmp_path / "p.yaml")]) == 0
    picked = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert picked["training"]["epochs"] == EPOCHS
    assert picked["training"]["schedule_epochs"] == EPOCHS
    assert "--epochs N" in (tmp_path / "p.yaml").read_text()  # the replay note


def test_successive_halving_spends_less_than_the_same_trials_at_full_fidelity(
        searches: dict[str, Any]) -> None:
    folder = searches["folder"]
    totals = {}
    for name in ("mo", "full"):
        parent, children, _ = runs_of(folder, name)
        logged = parent.data.metrics["search_train_flops"]
        assert logged == pytest.approx(sum(c.data.metrics["trial_train_flops"]
                                           for c in children))
        totals[name] = logged
    assert totals["mo"] < totals["full"]
    _, full, _ = runs_of(folder, "full")
    assert {c.data.tags["autoprune.status"] for c in full} == {"completed"}


def test_moasha_search_resumes_after_its_driver_is_killed(ray_session: str,
                                                          tmp_path: Path) -> None:
    """The driver dies mid-search; --resume ends every trial once, rung records kept. Both
    drivers join the test's Ray (``--address``), as drivers join a cluster."""
    from autoprune.search.moasha import STATE_FILE

    samples = 4
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({**SPACE, "num_samples": samples}))
    cmd = [sys.executable, "-m", "autoprune", "search", str(tmp_path / "space.yaml"),
           "--name", "r", "--scheduler", "moasha", "--tracking-uri", uri(tmp_path),
           "--storage-path", str(tmp_path / "ray"), "--address", ray_session]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while log.read_text().count(" done, ") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "ray" / "r" / STATE_FILE).is_file()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _, children, _ = runs_of(tmp_path, "r")
    ids = [c.data.tags["autoprune.trial_id"] for c in children]
    assert len(ids) == len(set(ids)), "a trial has two child runs"
    status = [c.data.tags["autoprune.status"] for c in children]
    # every planned trial ended once; a trial started in the last second before the kill,
    # which Ray's saved state does not know, is marked stopped (and replaced)
    assert status.count("completed") + status.count("pruned") == samples, status
    assert set(status) <= {"completed", "pruned", "stopped"} and "completed" in status
