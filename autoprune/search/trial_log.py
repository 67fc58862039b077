"""One trial's MLflow child run, logged idempotently (a resumed search logs nothing twice).

The run is found again by its ``autoprune.trial_id`` tag before one is created; epochs
already logged are skipped; a run that is already ``completed``, ``pruned`` or ``failed``
is left alone.

Steps count every epoch the trial trained: with multi-fidelity rungs, the curves of the
rungs follow one another (metric ``rung`` says which is which), and the end of each lower
rung is logged as ``rung<k>/accuracy``, ``rung<k>/macs``, ... A trial stopped after a
lower rung ends ``pruned``, with that rung's final values under the usual names and its
``epochs``; ``trial_train_flops`` is the training compute of all its rungs.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.search.store import (
    FIDELITY,
    METHOD,
    NODE_ID,
    PARENT,
    PROXY_RUN_ID,
    ROLE,
    STATUS,
    TRIAL_ID,
    RunLookup,
)
from autoprune.search.trainable import EPOCH_KEYS, FINAL_EXTRA_KEYS, MODEL_FILE, OBJECTIVE_KEYS
from autoprune.tracking.batch import log_in_batches

FINAL_PROGRESS_KEYS = ("epochs", "rung", "trial_train_flops")

if TYPE_CHECKING:
    from mlflow import MlflowClient

DONE = ("completed", "failed", "pruned")
RUNG_KEYS = ("accuracy", "macs", "params", "train_flops", "val_accuracy", "macs_ratio")
PROGRESS_KEYS = ("trial_train_flops", "rung")
ERROR_TAG, DIVERGED_TAG, RETRIES_TAG = "autoprune.error", "autoprune.diverged", "autoprune.retries"


class TrialLog:
    """Logging state of one child run."""

    def __init__(self, client: MlflowClient, run_id: str, status: str, logged_step: int) -> None:
        self.client, self.run_id, self.status = client, run_id, status
        self.logged_step = logged_step
        self.node_id = ""
        self.retries = 0
        self.checkpoint: Any = None
        self.tracking_uri = ""
        """Where the network of a completed trial is logged as an MLflow model ('' = not)."""
        self._last_ms = 0

    @classmethod
    def open(cls, client: MlflowClient, experiment_id: str, parent_id: str, trial_id: str,
             flat_config: Mapping[str, Any], fixed: Mapping[str, Any],
             fidelity: str = "full") -> TrialLog:
        """Find the trial's child run by tag, or create it with the trial's params; tags
        ``autoprune.fidelity`` and, on a replay, ``autoprune.proxy_run_id``."""
        run = RunLookup(client, experiment_id).child(trial_id)
        if run is not None:
            history = client.get_metric_history(run.info.run_id, "accuracy")
            status = run.data.tags.get(STATUS, "running")
            log = cls(client, run.info.run_id, status, max((m.step for m in history), default=0))
            if status not in DONE:
                client.update_run(run.info.run_id, status="RUNNING")
                client.set_tag(run.info.run_id, STATUS, "running")
            return log
        method = str(flat_config.get("method", ""))
        tags = {ROLE: "trial", PARENT: parent_id, TRIAL_ID: trial_id, STATUS: "running",
                METHOD: method, FIDELITY: fidelity}
        if flat_config.get("_proxy_run_id"):
            tags[PROXY_RUN_ID] = str(flat_config["_proxy_run_id"])
        run = client.create_run(experiment_id, run_name=f"{method}-{trial_id}", tags=tags)
        from mlflow.entities import Param

        params = schedule_params(flat_config, fixed)
        log_in_batches(client, run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return cls(client, run.info.run_id, "running", 0)

    @property
    def done(self) -> bool:
        return self.status in DONE

    def started(self) -> None:
        """Nothing to do: :meth:`open` created or reopened the run."""

    def result(self, result: Mapping[str, Any]) -> None:
        """A Ray result: tag the node once; log an epoch's metrics (step = epoch)."""
        if self.done:
            return
        node = str(result.get("node_id", ""))
        if node and node != self.node_id:
            self.client.set_tag(self.run_id, NODE_ID, node)
            self.node_id = node
        epoch = int(result.get("epoch") or 0)
        if result.get("rung_done") and not result.get("is_final"):
            prefix = f"rung{int(result.get('rung', 0))}/"
            values = {prefix + k: result[k] for k in RUNG_KEYS if k in result}
            self._metrics({**values, prefix + "epochs": result.get("epochs", 0)}, epoch)
            return
        if result.get("is_final") or epoch <= self.logged_step:
            return
        keys = (*EPOCH_KEYS, *PROGRESS_KEYS)
        self._metrics({k: result[k] for k in keys if k in result}, epoch)
        self.logged_step = epoch

    def complete(self, result: Mapping[str, Any], checkpoint: Any) -> None:
        """The trial ended: completed (final metrics, artifacts), failed, or stopped."""
        if self.done:
            return
        status = trial_outcome(result)
        if status in ("completed", "pruned"):
            keys = (*OBJECTIVE_KEYS, *FINAL_EXTRA_KEYS, *FINAL_PROGRESS_KEYS)
            step = int(result.get("epoch") or self.logged_step)
            self._metrics({k: result[k] for k in keys if k in result}, step)
            if checkpoint is not None:
                with checkpoint.as_directory() as folder:
                    self.client.log_artifacts(self.run_id, folder)
                    if status == "completed" and self.tracking_uri:
                        self._log_network(Path(folder) / MODEL_FILE)
            self._end(status, "FINISHED")
        elif status == "failed":
            self._failed(str(result.get("failure", "failed")), bool(result.get("diverged")))
        else:
            self._end("stopped", "KILLED")

    def _log_network(self, model_file: Path) -> None:
        """The trial's network as the run's MLflow model. A failure (a server away, a
        network torch.export refuses) is tagged, never fatal: ``model.pt`` is logged, and
        ``autoprune pick --register`` logs the MLflow model from it later."""
        from autoprune.deploy.mlflow_model import MODEL_ERROR_TAG, log_model_file

        try:
            log_model_file(self.tracking_uri, self.run_id, model_file)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self.client.set_tag(self.run_id, MODEL_ERROR_TAG,
                                _last_line(f"{type(exc).__name__}: {exc}"))

    def retrying(self, error: str) -> None:
        """Ray will retry the trial from its last checkpoint (``max_failures``)."""
        self.retries += 1
        self.client.set_tag(self.run_id, RETRIES_TAG, str(self.retries))
        self.client.set_tag(self.run_id, "autoprune.last_error", _last_line(error))

    def errored(self, error: str) -> None:
        if not self.done:
            self._failed(error, "TrainingDiverged" in error)

    @staticmethod
    def mark_stopped(client: MlflowClient, run_id: str) -> None:
        """A run whose trial the search no longer knows (it was lost in an interruption)."""
        client.set_tag(run_id, STATUS, "stopped")
        client.set_terminated(run_id, "KILLED")

    def _failed(self, error: str, diverged: bool) -> None:
        self.client.set_tag(self.run_id, ERROR_TAG, _last_line(error))
        self.client.set_tag(self.run_id, DIVERGED_TAG, str(diverged).lower())
        with tempfile.TemporaryDirectory(prefix="autoprune-error-") as folder:
            (Path(folder) / "error.txt").write_text(error)
            self.client.log_artifacts(self.run_id, folder)
        self._end("failed", "FAILED")

    def _end(self, status: str, mlflow_status: str) -> None:
        self.client.set_tag(self.run_id, STATUS, status)
        self.client.set_terminated(self.run_id, mlflow_status)
        self.status = status

    def _metrics(self, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        stamp = max(int(time.time() * 1000), self._last_ms + 1)  # final beats the last epoch
        self._last_ms = stamp
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))]
        log_in_batches(self.client, self.run_id, metrics=metrics)  # one call an epoch


def trial_outcome(result: Mapping[str, Any]) -> str:
    """How a trial ended, from its last result: ``completed`` (full fidelity), ``failed``,
    ``pruned`` (stopped by the TrialScheduler after a lower rung) or ``stopped``."""
    if result.get("is_final"):
        return str(result.get("trial_status", "stopped"))
    return "pruned" if result.get("rung_done") else "stopped"


def schedule_params(flat: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params: the resolved train config, flattened (the raw trial config if invalid)."""
    from autoprune.config import parse_train_config
    from autoprune.errors import UserError
    from autoprune.search.sampling import flatten, train_config_dict

    try:
        data = parse_train_config(train_config_dict(fixed, flat)).to_dict()
    except UserError:
        data = dict(flat)
    return {k: str(v)[:6000] for k, v in flatten(data).items()}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:500]


__all__ = ["TrialLog", "schedule_params", "trial_outcome"]
