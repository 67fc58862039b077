"""MLflow set-ups shared by the tests: a search store written directly, a real server."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from _processes import Processes, wait_for_port

from autoprune.search.pick import NO_JOB_RUNNER

TRAIN_CONFIG: dict[str, Any] = {
    "model": "small_cnn", "dataset": {"name": "digits"},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.05, "seed": 0},
    "method": "filter", "method_params": {"target_ratio": 0.5, "end_epoch": 1},
}


def search_store(folder: Path, trials: Iterable[tuple[str, str, Mapping[str, float]]],
                 experiment: str = "s", step: int = 1, config: bool = False,
                 legacy: bool = False, tags: Mapping[str, str] | None = None) -> str:
    """A SQLite store in ``folder`` holding one finished search as the tracking callback
    writes it: a parent run (with ``tags``) and a child run per ``(trial_id, status,
    metrics)``; with ``config``, each child also has a ``train_config.yaml`` artifact.
    ``accuracy`` is the validation accuracy: ``val_accuracy`` repeats it and
    ``test_accuracy`` is 0.01 lower unless given. ``legacy``: as a search logged before
    searches chose on validation accuracy (``accuracy`` then holds the test accuracy, and
    no ``test_accuracy`` is logged). Returns its URI."""
    from autoprune.search.store import artifact_location, open_client

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = open_client(uri)
    exp = client.create_experiment(experiment,
                                   artifact_location=artifact_location(uri, experiment))
    parent = client.create_run(exp, tags={"autoprune.role": "search",
                                          **(tags or {})}).info.run_id
    client.log_param(parent, "objectives", "accuracy,macs")
    for trial, status, metrics in trials:
        if not legacy and "accuracy" in metrics:
            metrics = {"val_accuracy": metrics["accuracy"],
                       "test_accuracy": metrics["accuracy"] - 0.01, **metrics}
        run = client.create_run(exp, tags={
            "autoprune.role": "trial", "mlflow.parentRunId": parent,
            "autoprune.trial_id": trial, "autoprune.status": status}).info.run_id
        client.log_param(run, "method", "filter")
        for key, value in metrics.items():
            client.log_metric(run, key, value, step=step)
        if config:
            client.log_text(run, yaml.safe_dump(TRAIN_CONFIG), "train_config.yaml")
        client.set_terminated(run, "FINISHED" if status == "completed" else "FAILED")
    return uri


def mlflow_server(procs: Processes, folder: Path, port: int, name: str) -> Any:
    """``mlflow server`` on ``port`` with its store in ``folder``, once it listens."""
    proc = procs.start(name, [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                              f"sqlite:///{folder / 'server.db'}", "--host", "127.0.0.1",
                              "--port", str(port), "--workers", "1"], cwd=folder,
                       env=NO_JOB_RUNNER)
    wait_for_port(port, 120, process=proc.popen)
    return proc
