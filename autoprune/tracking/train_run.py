"""``autoprune train --tracking-uri``: one training run as an MLflow run.

The run (tag ``autoprune.role=train``) gets the resolved train config as params, each
epoch's validation ``accuracy``, ``macs``, ``params`` and cumulative ``train_flops`` as
metrics (step = epoch), the final values (``accuracy`` = test accuracy) at the last step,
``model.pt``, ``summary.json``, ``schedule.png`` and ``train_config.yaml`` as artifacts,
and the network as its MLflow model (``runs:/<run_id>/model``), like a search's completed trial.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FINAL_KEYS = ("accuracy", "macs", "params", "train_flops", "latency_ms", "macs_ratio",
              "params_ratio", "dense_macs", "dense_params", "dense_train_flops",
              "train_flops_ratio", "wall_time_s", "test_loss", "val_accuracy",
              "test_accuracy")
EPOCH_KEYS = ("accuracy", "macs", "params", "train_flops")


def log_training(uri: str, experiment: str, out: Path, summary: Mapping[str, Any]) -> str:
    """Log a finished ``autoprune train`` (its folder ``out``); returns the run id."""
    from mlflow.entities import Metric, Param

    from autoprune.config import dump_yaml
    from autoprune.deploy.mlflow_model import log_model_file
    from autoprune.search.sampling import flatten
    from autoprune.search.store import METHOD, ROLE, get_or_create_experiment, open_client
    from autoprune.tracking.batch import log_in_batches

    client = open_client(uri)
    experiment_id = get_or_create_experiment(client, uri, experiment)
    config = summary["config"]
    run = client.create_run(experiment_id, run_name=out.name,
                            tags={ROLE: "train", METHOD: str(config.get("method", ""))})
    run_id = run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
    stamp = int(time.time() * 1000)
    metrics = [Metric(key, float(record[key]), stamp, int(record["epoch"]))
               for record in summary.get("epochs", []) for key in EPOCH_KEYS
               if isinstance(record.get(key), (int, float))]
    last = max((int(r["epoch"]) for r in summary.get("epochs", [])), default=0)
    metrics += [Metric(key, float(summary[key]), stamp + 1, last) for key in FINAL_KEYS
                if isinstance(summary.get(key), (int, float))]
    log_in_batches(client, run_id, params=params, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="autoprune-train-") as folder:
        dump_yaml(config, Path(folder) / "train_config.yaml")
        client.log_artifact(run_id, str(Path(folder) / "train_config.yaml"))
    for name in ("model.pt", "summary.json", "schedule.png"):
        if (out / name).is_file():  # schedule.png: drawn unless matplotlib failed
            client.log_artifact(run_id, str(out / name))
    log_model_file(uri, run_id, out / "model.pt")
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)
