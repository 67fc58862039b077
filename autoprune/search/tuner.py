"""Build and run a search: a Ray Tune ``Tuner`` with Optuna, MLflow tracking and progress.

Without ``--address`` a local, embedded Ray is started for the search and shut down
after it; with one, the search joins that cluster (``auto``, ``host:port``, ``ray://``).
``--resume`` continues an interrupted search with ``Tuner.restore``: completed trials are
skipped, unfinished ones continue from their last checkpoint, errored ones stay failed
(restarting them would give them new ids that OptunaSearch does not know).

A two-stage search (the space's ``fidelity:`` block) is two Tuners under one MLflow parent
run: stage 1 (Ray experiment ``NAME``) is the sampler's search with every trial at the
proxy budget; stage 2 (Ray experiment ``NAME-replay``) retrains the schedules chosen from
the proxy front at full fidelity, each a Ray trial like any other. ``--resume`` continues
whichever stage was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoprune.cluster import ray_session
from autoprune.errors import UserError
from autoprune.search.space import SearchSpace

SETTINGS_FILE = "autoprune_search.json"
REPLAY_SUFFIX = "-replay"
"""Ray experiment of a two-stage search's second stage: ``<name>-replay``."""
_RAY_ENV = {
    # Seconds between saves of Ray's experiment state. Ray's default (10 s or more) could
    # lose a short trial's completion to an interruption; the state of a search is small.
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the legacy reporter prints nothing at verbose=0
}


@dataclass(frozen=True)
class SearchRequest:
    """Everything ``autoprune search`` was asked for (space already validated)."""

    space: SearchSpace
    space_file: str
    name: str
    tracking_uri: str
    storage_path: str
    address: str | None = None
    resume: bool = False

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def settings(self) -> dict[str, Any]:
        """What must not change when a search is resumed."""
        s = self.space
        return {"space": s.source, "tracking_uri": self.tracking_uri, "sampler": s.sampler,
                "seed": s.seed, "num_samples": s.num_samples, "objectives": list(s.objectives),
                "max_concurrent": s.max_concurrent, "max_failures": s.max_failures,
                "resources": [s.resources.cpu, s.resources.gpu] + (
                    [s.resources.workers, s.resources.worker_cpu, s.resources.worker_gpu]
                    if s.resources.workers > 1 else []),
                "scheduler": [s.scheduler.name, *s.rungs, s.scheduler.reduction_factor],
                "fidelity": s.fidelity.settings() if s.fidelity.enabled else None,
                "target": str(s.target) if s.target is not None else None}


@dataclass(frozen=True)
class SearchOutcome:
    name: str
    tracking_uri: str
    experiment_path: str
    trials: int
    errored: int
    interrupted: bool = False
    replayed: int = 0
    """Stage-2 trials of a two-stage search (0 for a one-stage search)."""


def run_search(request: SearchRequest) -> SearchOutcome:
    """Run (or resume) the search to the end; MLflow holds the results."""
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    from ray import tune

    check_start(request)
    space = request.space
    if not request.resume:
        from autoprune.search.preflight import check_network

        check_network(space)  # the user's own network takes every searched method
    two_stage = space.fidelity.enabled
    replay_path = request.experiment_path + REPLAY_SUFFIX
    with ray_session(request.address):
        max_concurrent = concurrency(space, local=request.address is None)
        if not (two_stage and request.resume and tune.Tuner.can_restore(replay_path)):
            if two_stage:
                print(f"stage 1: {space.num_samples} trials at the proxy budget "
                      f"({space.fidelity.describe()})", flush=True)
            stage = "proxy" if two_stage else "full"
            trainable = make_trainable(space, proxy=space.fidelity.proxy if two_stage else None)
            if request.resume:
                tuner = tune.Tuner.restore(request.experiment_path, trainable,
                                           resume_unfinished=True, resume_errored=False,
                                           restart_errored=False)
            else:
                tuner = build_tuner(request, trainable, max_concurrent, stage)
                write_settings(request)
            grid = tuner.fit()
            first = _outcome(request, grid, space.num_samples)
            if not two_stage or first.interrupted:
                return first
            replays = replay_configs(request, [grid[i] for i in range(len(grid))])
            if not replays:
                print("stage 2: no completed proxy trial to replay", flush=True)
                return first
            print(f"stage 2: {len(replays)} schedules of the proxy front at full fidelity "
                  f"({space.epochs} epochs)", flush=True)
            tuner = build_replay_tuner(request, make_trainable(space), replays, max_concurrent)
        else:
            tuner = tune.Tuner.restore(replay_path, make_trainable(space),
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        grid = tuner.fit()
    second = _outcome(request, grid, _planned(grid))
    return dataclasses.replace(second, trials=second.trials + space.num_samples,
                               replayed=second.trials)


def _outcome(request: SearchRequest, grid: Any, planned: int) -> SearchOutcome:
    results = [grid[i] for i in range(len(grid))]
    ended = [r for r in results if r.error is not None or (r.metrics or {}).get("is_final")
             or (r.metrics or {}).get("rung_done")]
    return SearchOutcome(request.name, request.tracking_uri, request.experiment_path,
                         len(grid), len(grid.errors), interrupted=len(ended) < planned)


def _planned(grid: Any) -> int:
    """Stage 2 plans exactly the trials it holds (its configs are fixed up front)."""
    return len(grid)


def build_tuner(request: SearchRequest, trainable: Any, max_concurrent: int,
                stage: str = "full") -> Any:
    """A fresh Tuner: Optuna define-by-run search, the space's TrialScheduler (none, or
    multi-objective successive halving), our callbacks. ``stage``: ``full`` (a one-stage
    search) or ``proxy`` (stage 1 of a two-stage search)."""
    import optuna
    from ray import tune

    from autoprune.search.samplers import build_sampler
    from autoprune.search.sampling import DefineByRun
    from autoprune.search.searcher import FinalResultSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = request.space
    sampler = build_sampler(space.sampler, space.sampler_options, space.seed,
                            len(space.objectives))
    searcher = FinalResultSearch(DefineByRun(space), metric=list(space.objectives),
                                 mode=list(space.modes), sampler=sampler, target=space.target)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=build_scheduler(request),
        num_samples=space.num_samples, max_concurrent_trials=max_concurrent,
        reuse_actors=True, trial_dirname_creator=trial_dirname,
    )
    run_config = _run_config(request, request.name, stage, space.num_samples,
                             last_stage=stage == "full")
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def build_replay_tuner(request: SearchRequest, trainable: Any, replays: list[dict[str, Any]],
                       max_concurrent: int) -> Any:
    """Stage 2 of a two-stage search: each of ``replays`` (a proxy trial's flat config and
    ``_proxy_run_id``) is one full-fidelity trial; nothing is sampled."""
    from ray import tune

    from autoprune.search.searcher import ReplaySearch

    tune_config = tune.TuneConfig(
        search_alg=ReplaySearch(replays),
        num_samples=len(replays), max_concurrent_trials=max_concurrent,
        reuse_actors=True, trial_dirname_creator=trial_dirname,
    )
    run_config = _run_config(request, request.name + REPLAY_SUFFIX, "full", len(replays),
                             last_stage=True)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _run_config(request: SearchRequest, ray_name: str, stage: str, trials: int,
                last_stage: bool) -> Any:
    from ray import tune

    from autoprune.search.progress import ProgressPrinter
    from autoprune.tracking.callback import TrackingCallback

    space = request.space
    parent_params = {"space_file": request.space_file, "sampler": space.sampler,
                     "seed": space.seed, "num_samples": space.num_samples,
                     "objectives": ",".join(space.objectives), "model": space.fixed["model"],
                     "methods": ",".join(space.methods), "max_failures": space.max_failures,
                     "scheduler": space.scheduler.name,
                     "rungs": ",".join(str(r) for r in space.rungs),
                     "fidelity": space.fidelity.describe() if space.fidelity.enabled
                     else "full", "selection": "val_accuracy"}
    callbacks = [
        TrackingCallback(request.tracking_uri, request.name, space.objectives, space.modes,
                         space.fixed, parent_params, space.source, stage=stage,
                         last_stage=last_stage, target=space.target),
        ProgressPrinter(space.objectives, space.modes, trials,
                        label="proxy front" if stage == "proxy" else "front"),
    ]
    return tune.RunConfig(
        name=ray_name, storage_path=request.storage_path, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0,
    )


def replay_configs(request: SearchRequest, results: list[Any]) -> list[dict[str, Any]]:
    """The stage-2 trials: the proxy front (or its top K) of the completed stage-1 trials,
    within the target where any proxy trial is, each with its MLflow run id."""
    from autoprune.search.stages import choose_replays

    rows = []
    for result in results:
        metrics = result.metrics or {}
        if metrics.get("is_final") and metrics.get("trial_status") == "completed":
            rows.append({**metrics, "config": dict(result.config),
                         "trial_id": str(metrics.get("trial_id", ""))})
    space = request.space
    chosen = choose_replays(rows, space.objectives, space.modes, space.fidelity.replay,
                            space.target)
    run_ids = _proxy_run_ids(request)
    return [{**row["config"], "_proxy_run_id": run_ids.get(row["trial_id"], ""),
             "_proxy_trial_id": row["trial_id"]} for row in chosen]


def _proxy_run_ids(request: SearchRequest) -> dict[str, str]:
    """MLflow run id of every stage-1 trial, by Ray trial id."""
    from autoprune.search.store import TRIAL_ID, load_search

    record = load_search(request.tracking_uri, request.name)
    return {str(run.data.tags.get(TRIAL_ID, "")): str(run.info.run_id)
            for run in record.lookup.children()}


def build_scheduler(request: SearchRequest) -> Any:
    """The TrialScheduler: None (Ray's FIFO: every trial runs its full budget) or MOASHA."""
    space = request.space
    if not space.scheduler.enabled:
        return None
    from autoprune.search.moasha import MultiObjectiveASHA

    return MultiObjectiveASHA(space.objectives, space.modes, space.rungs,
                              space.scheduler.reduction_factor,
                              state_dir=request.experiment_path)


def make_trainable(space: SearchSpace, proxy: Mapping[str, Any] | None = None) -> Any:
    """The trial function with the fixed config, the rungs (or the proxy budget of a
    two-stage search's first stage) and the space's resources."""
    from ray import tune

    from autoprune.search.trainable import run_trial

    resources = space.resources.trial_process  # a data-parallel trial's workers: their own
    rungs = () if proxy else space.rungs
    trainable = tune.with_parameters(run_trial, fixed=dict(space.fixed), rungs=rungs,
                                     proxy=dict(proxy) if proxy else None)
    return tune.with_resources(trainable, resources)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def concurrency(space: SearchSpace, local: bool) -> int:
    """Trials at once: the space's ``max_concurrent``, else as many as the resources fit.

    Limiting it keeps the sampler informed: it suggests a trial only when one can start.
    """
    import ray

    return space.max_concurrent or trials_that_fit(space, ray.cluster_resources(), local)


def trials_that_fit(space: SearchSpace, total: Mapping[str, float], local: bool) -> int:
    """How many trials the resources ``total`` (Ray's ``{"CPU": n, "GPU": m}``) hold at
    once; fractional GPUs share a device (``gpu: 0.25``: four trials per GPU). On a
    local machine a trial that cannot fit at all is a :class:`UserError`."""
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    need_cpu, need_gpu = space.resources.trial_total  # every worker of a data-parallel trial
    if local and (need_cpu > cpus or need_gpu > gpus):
        workers = space.resources.workers
        each = f" ({workers} workers)" if workers > 1 else ""
        raise UserError(f"resources: a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU"
                        f"{each}, this machine has {cpus:g} CPU and {gpus:g} GPU")
    fit = math.floor(cpus / need_cpu + 1e-9) if need_cpu else 1
    if need_gpu:
        fit = min(fit, math.floor(gpus / need_gpu + 1e-9))
    return max(1, fit)


def check_start(request: SearchRequest) -> None:
    """Before Ray starts: a new search must not exist yet; a resumed one must, unchanged."""
    from ray import tune

    exists = tune.Tuner.can_restore(request.experiment_path)
    if request.resume:
        if not exists:
            raise UserError(f"nothing to resume: no search {request.name!r} under "
                            f"{request.storage_path} (check --name and --storage-path)")
        stored = read_settings(request)
        changed = [k for k, v in request.settings().items() if stored.get(k, v) != v]
        if changed:
            raise UserError(f"--resume continues search {request.name!r} as it was started; "
                            f"these differ now: {', '.join(changed)}")
        return
    if exists:
        raise UserError(f"search {request.name!r} already exists under {request.storage_path}: "
                        "add --resume to continue it, or pick another --name")
    _check_mlflow_free(request)


def _check_mlflow_free(request: SearchRequest) -> None:
    from autoprune.search.store import RunLookup, open_client

    client = open_client(request.tracking_uri)
    experiment = client.get_experiment_by_name(request.name)
    if experiment is not None and RunLookup(client, str(experiment.experiment_id)).parent():
        raise UserError(f"MLflow experiment {request.name!r} already holds a search "
                        f"({request.tracking_uri}): pick another --name")


def write_settings(request: SearchRequest) -> None:
    """Next to Ray's experiment state (a local path or a URI such as ``s3://...``)."""
    fs, folder = _filesystem(request.experiment_path)
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{SETTINGS_FILE}") as out:
        out.write(json.dumps(request.settings(), indent=2).encode())


def read_settings(request: SearchRequest) -> dict[str, Any]:
    import pyarrow.fs

    fs, folder = _filesystem(request.experiment_path)
    path = f"{folder}/{SETTINGS_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return {}
    with fs.open_input_stream(path) as src:
        return json.loads(src.read().decode())


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


__all__ = ["SearchOutcome", "SearchRequest", "build_tuner", "ray_session", "read_settings",
           "run_search", "write_settings"]
