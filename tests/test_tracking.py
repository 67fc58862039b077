"""The driver's MLflow callback, driven by fake trials (no Ray cluster needed)."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from autoprune.search.progress import ProgressPrinter
from autoprune.search.store import RunLookup, open_client
from autoprune.tracking import TrackingCallback

FIXED = {"model": "small_cnn", "dataset": {"name": "digits"},
         "training": {"epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 0}}


@dataclass
class FakeCheckpoint:
    folder: Path

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.folder)


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=lambda: {"method": "filter",
                                                            "filter.target_ratio": 0.5})
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None
    error: str | None = None

    def get_error(self) -> str | None:
        return self.error


def epoch(n: int, acc: float = 0.5) -> dict[str, Any]:
    return {"epoch": n, "accuracy": acc, "macs": 1000.0 / n, "params": 100.0,
            "train_flops": 1e6 * n, "is_final": False, "trial_status": "running",
            "node_id": "node-a"}


def final(acc: float, macs: float) -> dict[str, Any]:
    return {"epoch": 2, "accuracy": acc, "macs": macs, "params": 50.0, "train_flops": 3e6,
            "latency_ms": 0.5, "is_final": True, "trial_status": "completed",
            "node_id": "node-a"}


def finish(cb: TrackingCallback, trial: FakeTrial, result: dict[str, Any]) -> None:
    cb.on_trial_result(0, [], trial, result)
    trial.last_result, trial.status = result, "TERMINATED"
    cb.on_trial_complete(0, [], trial)


@pytest.fixture()
def callback(tmp_path: Path) -> TrackingCallback:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = TrackingCallback(uri, "x", ("accuracy", "macs"), ("max", "min"), FIXED,
                          {"sampler": "nsga2", "objectives": "accuracy,macs"}, "space: 1\n",
                          refresh_s=0.0)
    cb.setup()
    return cb


def test_completed_failed_resumed_and_lost_trials(callback: TrackingCallback,
                                                  tmp_path: Path) -> None:
    cb = callback
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("model.pt", "summary.json", "train_config.yaml"):
        (folder / name).write_text(name)
    t1 = FakeTrial("t1", checkpoint=FakeCheckpoint(folder))
    cb.on_trial_start(0, [], t1)
    cb.on_trial_result(0, [], t1, epoch(1))
    cb.on_trial_result(0, [], t1, epoch(2))
    finish(cb, t1, final(0.9, 400.0))

    t2 = FakeTrial("t2", error="Traceback ...\nRuntimeError: boom")
    cb.on_trial_start(0, [], t2)
    cb.on_trial_recover(0, [], t2)
    t2.status = "ERROR"
    cb.on_trial_error(0, [], t2)

    t3 = FakeTrial("t3", checkpoint=FakeCheckpoint(folder))
    cb.on_trial_start(0, [], t3)
    cb.on_trial_result(0, [], t3, epoch(1))
    cb.on_step_end(0, [])
    resumed = pickle.loads(pickle.dumps(cb))  # what Tuner.restore gets back
    resumed.setup()
    resumed.on_trial_start(0, [], t3)
    resumed.on_trial_result(0, [], t3, epoch(1))  # replayed after the restore
    resumed.on_trial_result(0, [], t3, epoch(2))
    finish(resumed, t3, final(0.95, 900.0))
    resumed.on_trial_start(0, [], FakeTrial("t4"))  # lost: Ray no longer knows it
    resumed.on_experiment_end([t1, t2, t3])

    client = open_client(cb.uri)
    lookup = RunLookup(client, cb.experiment_id)
    assert len(lookup._search("tags.`autoprune.role` = 'search'")) == 1
    runs = {r.data.tags["autoprune.trial_id"]: r for r in lookup.children()}
    assert sorted(runs) == ["t1", "t2", "t3", "t4"]
    status = {t: r.data.tags["autoprune.status"] for t, r in runs.items()}
    assert status == {"t1": "completed", "t2": "failed", "t3": "completed", "t4": "stopped"}
    assert runs["t1"].data.metrics["accuracy"] == 0.9  # the final value, not epoch 2's
    assert runs["t1"].data.params["method_params.target_ratio"] == "0.5"
    assert runs["t1"].data.tags["autoprune.node_id"] == "node-a"
    steps = [m.step for m in client.get_metric_history(runs["t3"].info.run_id, "accuracy")]
    assert sorted(steps) == [1, 2, 2]  # epoch 1 not logged twice
    assert runs["t2"].data.tags["autoprune.error"] == "RuntimeError: boom"
    assert runs["t2"].data.tags["autoprune.retries"] == "1"
    assert runs["t2"].info.status == "FAILED"
    artifacts = {a.path for a in client.list_artifacts(runs["t1"].info.run_id)}
    assert {"model.pt", "summary.json", "train_config.yaml"} <= artifacts
    assert "error.txt" in {a.path for a in client.list_artifacts(runs["t2"].info.run_id)}
    parent = client.get_run(cb.parent_id)
    assert parent.info.status == "FINISHED"
    assert {"pareto.csv", "pareto.png", "pareto.html", "search_space.yaml"} <= {
        a.path for a in client.list_artifacts(cb.parent_id)}
    csv_path = client.download_artifacts(cb.parent_id, "pareto.csv", str(tmp_path))
    assert {line.split(",")[0] for line in Path(csv_path).read_text().splitlines()[1:]} == {
        "t1", "t3"}


def test_diverged_trial_is_failed_and_marked(callback: TrackingCallback) -> None:
    trial = FakeTrial("d")
    callback.on_trial_start(0, [], trial)
    result = {"accuracy": float("nan"), "macs": float("nan"), "is_final": True,
              "trial_status": "failed", "failure": "TrainingDiverged: loss became nan",
              "diverged": True, "node_id": "n"}
    finish(callback, trial, result)
    run = RunLookup(open_client(callback.uri), callback.experiment_id).child("d")
    assert run is not None
    assert run.data.tags["autoprune.status"] == "failed"
    assert run.data.tags["autoprune.diverged"] == "true"
    assert "accuracy" not in run.data.metrics


def test_progress_printer_lines(capsys: pytest.CaptureFixture[str]) -> None:
    printer = pickle.loads(pickle.dumps(ProgressPrinter(("accuracy", "macs"), ("max", "min"), 3)))
    done = FakeTrial("a", status="TERMINATED", last_result=final(0.9, 2e6))
    ending = FakeTrial("b", last_result=final(0.8, 1e6))
    printer.on_trial_complete(0, [done, ending, FakeTrial("c")], ending)
    out = capsys.readouterr().out
    assert "[2/3 done, 1 running, 0 failed] b filter completed: accuracy 0.800, macs 1M" in out
    assert "front (2 trials): 0.800 @ 1M | 0.900 @ 2M" in out


def test_log_in_batches_keeps_within_mlflows_limits() -> None:
    from autoprune.tracking.batch import log_in_batches

    calls: list[tuple[str, int, int, int]] = []

    class Client:
        def log_batch(self, run_id, metrics=(), params=(), tags=()):
            calls.append((run_id, len(metrics), len(params), len(tags)))

    assert log_in_batches(Client(), "r", metrics=list(range(2500)), params=list(range(250)),
                          tags=list(range(100))) == 7
    assert calls == [("r", 0, 100, 0), ("r", 0, 100, 0), ("r", 0, 50, 0), ("r", 0, 0, 100),
                     ("r", 1000, 0, 0), ("r", 1000, 0, 0), ("r", 500, 0, 0)]
    calls.clear()
    assert log_in_batches(Client(), "r", metrics=[]) == 0 and calls == []
