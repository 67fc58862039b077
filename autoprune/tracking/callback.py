"""MLflow, written from the search driver: a ``ray.tune`` Callback, plus the lookups.

Layout (DESIGN.md): experiment = the search's name; one parent run
(``autoprune.role=search``) holding the space and the Pareto artifacts; one child run
per Ray trial (``autoprune.role=trial``, ``mlflow.parentRunId``), found again by its
``autoprune.trial_id`` tag when a search resumes, so that nothing is logged twice.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from autoprune.search.progress import was_interrupted
from autoprune.search.store import (
    ROLE,
    STATUS,
    TARGET,
    TRIAL_ID,
    RunLookup,
    completed_rows,
    get_or_create_experiment,
    open_client,
    run_page_prefix,
    search_compute,
)
from autoprune.search.target import Target
from autoprune.search.trial_log import TrialLog
from autoprune.tracking.batch import log_in_batches
from autoprune.tracking.spool import finish, replay, replay_if_due, resilient

SEARCH_STATUS = "autoprune.search_status"
# MLflow's experiment type: training runs, not GenAI traces (the UI's experiment-type tag).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial


class TrackingCallback(Callback):
    """Logs the search to MLflow as trials start, report, complete or fail.

    Pickled with the Tuner (Ray saves it for ``Tuner.restore``): only the settings travel;
    the client and run ids are rebuilt in :meth:`setup`. ``stage``: the fidelity of this
    Tuner's trials (tag ``autoprune.fidelity``: ``proxy`` in stage 1 of a two-stage search,
    ``full`` otherwise); ``last_stage``: whether the search ends with this Tuner.
    """

    stage = "full"  # defaults for a callback pickled before these settings existed
    last_stage = True
    target: Target | None = None

    def __init__(self, uri: str, name: str, objectives: tuple[str, ...], modes: tuple[str, ...],
                 fixed: Mapping[str, Any], parent_params: Mapping[str, Any],
                 space_text: str, refresh_s: float = 30.0, stage: str = "full",
                 last_stage: bool = True, target: Target | None = None) -> None:
        self.uri, self.name, self.objectives, self.modes = uri, name, objectives, modes
        self.fixed, self.parent_params, self.space_text = dict(fixed), parent_params, space_text
        self.refresh_s = refresh_s
        self.stage, self.last_stage, self.target = stage, last_stage, target
        self.total = 0
        self._reset()

    def _reset(self) -> None:
        self.client: MlflowClient | None = None
        self.parent_id = ""
        self.experiment_id = ""
        self._trials: dict[str, TrialLog] = {}
        self._front_dirty = False
        self._last_refresh = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("client", "parent_id", "experiment_id", "_trials"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- Ray Tune hooks -------------------------------------------------------------------

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self.total = total_num_samples or 0
        self.client = resilient(open_client(self.uri), self.name)  # retries, spools
        replay(self.client)  # what an earlier, interrupted run could not send
        self.experiment_id = get_or_create_experiment(self.client, self.uri, self.name)
        self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.parent_id = self._parent_run()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._log(trial).started()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        self._log(trial).result(result)

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial,
                      checkpoint: Any, **info: Any) -> None:
        self._log(trial).checkpoint = checkpoint

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        log = self._log(trial)
        log.complete(trial.last_result or {}, log.checkpoint or trial.checkpoint)
        self._front_dirty = True

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info: Any) -> None:
        self._log(trial).retrying(_error_text(trial))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._log(trial).errored(_error_text(trial))

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        replay_if_due(self.client)
        if self._front_dirty and time.monotonic() - self._last_refresh > self.refresh_s:
            self.refresh_front()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.refresh_front()
        assert self.client is not None
        lookup = RunLookup(self.client, self.experiment_id, self.parent_id)
        known = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        for run in lookup.children():
            status = run.data.tags.get(STATUS)
            if status in ("running", None) and run.data.tags.get(TRIAL_ID) not in known:
                TrialLog.mark_stopped(self.client, run.info.run_id)
        interrupted = was_interrupted(trials, self.total)
        status = "completed" if self.last_stage else f"{self.stage}_done"
        self.client.set_tag(self.parent_id, SEARCH_STATUS,
                            "interrupted" if interrupted else status)
        self.client.set_terminated(self.parent_id, "KILLED" if interrupted else "FINISHED")
        finish(self.client, self.uri)

    # --- helpers --------------------------------------------------------------------------

    def refresh_front(self) -> None:
        """Rewrite ``pareto.csv/png/html`` on the parent run from the completed trials,
        and the search's compute so far (``search_train_flops``)."""
        from mlflow.entities import Metric

        from autoprune.search import pareto

        assert self.client is not None
        runs = RunLookup(self.client, self.experiment_id, self.parent_id).children()
        lookup = RunLookup(self.client, self.experiment_id)
        rows = completed_rows(lookup, runs)
        link = run_page_prefix(self.uri, str(self.experiment_id))  # pareto.html's clicks
        with tempfile.TemporaryDirectory(prefix="autoprune-pareto-") as folder:
            title = f"{self.name}: {len(rows)} completed trials"
            pareto.write_all(rows, self.objectives, self.modes, Path(folder), title, link)
            self.client.log_artifacts(self.parent_id, folder)
        if self.stage == "proxy":  # stage 1's front, apart: it never enters pareto.csv
            proxies = completed_rows(lookup, runs, fidelity="proxy")
            with tempfile.TemporaryDirectory(prefix="autoprune-pareto-") as folder:
                title = f"{self.name}, stage 1: {len(proxies)} proxy trials"
                pareto.write_all(proxies, self.objectives, self.modes, Path(folder), title,
                                 link)
                self.client.log_artifacts(self.parent_id, folder, "proxy")
        stamp, step = int(time.time() * 1000), len(runs)
        metrics = [Metric(k, v, stamp, step) for k, v in search_compute(runs).items()]
        log_in_batches(self.client, self.parent_id, metrics=metrics)
        self._front_dirty = False
        self._last_refresh = time.monotonic()

    def _log(self, trial: Trial) -> TrialLog:
        if trial.trial_id not in self._trials:
            assert self.client is not None
            self._trials[trial.trial_id] = TrialLog.open(
                self.client, self.experiment_id, self.parent_id, trial.trial_id,
                dict(trial.config), self.fixed, fidelity=self.stage)
            self._trials[trial.trial_id].tracking_uri = self.uri
        return self._trials[trial.trial_id]

    def _parent_run(self) -> str:
        assert self.client is not None
        run = RunLookup(self.client, self.experiment_id, "").parent()
        if run is not None:
            self.client.update_run(run.info.run_id, status="RUNNING")
            self.client.set_tag(run.info.run_id, SEARCH_STATUS, "running")
            return str(run.info.run_id)
        tags = {ROLE: "search", SEARCH_STATUS: "running"}
        if self.target is not None:
            tags[TARGET] = str(self.target)
        run = self.client.create_run(self.experiment_id, run_name=f"search-{self.name}",
                                     tags=tags)
        run_id = str(run.info.run_id)
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in self.parent_params.items()]
        log_in_batches(self.client, run_id, params=params)
        self.client.log_text(run_id, self.space_text, "search_space.yaml")
        return run_id


def _error_text(trial: Trial) -> str:
    error: Any = trial.get_error()
    if error is None:  # Ray writes the error file locally first, to storage later
        try:
            error = Path(trial.error_file).read_text() if trial.error_file else None
        except (OSError, TypeError, AttributeError):
            error = None
    return str(error) if error else "unknown error (see the Ray trial folder)"


__all__ = ["TrackingCallback"]
