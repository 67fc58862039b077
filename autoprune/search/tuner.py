"""Build and run a search: a Ray Tune ``Tuner`` with Optuna, MLflow tracking and progress.

Without ``--address`` a local, embedded Ray is started for the search and shut down
after it; with one, the search joins that cluster (``auto``, ``host:port``, ``ray://``).
``--resume`` continues an interrupted search with ``Tuner.restore``: completed trials are
skipped, unfinished ones continue from their last checkpoint, errored ones stay failed
(restarting them would give them new ids that OptunaSearch does not know).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from autoprune.errors import UserError
from autoprune.search.space import SearchSpace

SETTINGS_FILE = "autoprune_search.json"
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
                "resources": [s.resources.cpu, s.resources.gpu],
                "scheduler": [s.scheduler.name, *s.rungs, s.scheduler.reduction_factor]}


@dataclass(frozen=True)
class SearchOutcome:
    name: str
    tracking_uri: str
    experiment_path: str
    trials: int
    errored: int
    interrupted: bool = False


def run_search(request: SearchRequest) -> SearchOutcome:
    """Run (or resume) the search to the end; MLflow holds the results."""
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    from ray import tune

    check_start(request)
    with ray_session(request.address):
        max_concurrent = concurrency(request.space, local=request.address is None)
        trainable = make_trainable(request.space)
        if request.resume:
            tuner = tune.Tuner.restore(request.experiment_path, trainable,
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            tuner = build_tuner(request, trainable, max_concurrent)
            write_settings(request)
        grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    ended = [r for r in results if r.error is not None or (r.metrics or {}).get("is_final")
             or (r.metrics or {}).get("rung_done")]
    return SearchOutcome(request.name, request.tracking_uri, request.experiment_path,
                         len(grid), len(grid.errors),
                         interrupted=len(ended) < request.space.num_samples)


def build_tuner(request: SearchRequest, trainable: Any, max_concurrent: int) -> Any:
    """A fresh Tuner: Optuna define-by-run search, the space's TrialScheduler (none, or
    multi-objective successive halving), our callbacks."""
    import optuna
    from ray import tune

    from autoprune.search.progress import ProgressPrinter
    from autoprune.search.samplers import build_sampler
    from autoprune.search.sampling import DefineByRun
    from autoprune.search.searcher import FinalResultSearch
    from autoprune.tracking.callback import TrackingCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = request.space
    sampler = build_sampler(space.sampler, space.sampler_options, space.seed,
                            len(space.objectives))
    searcher = FinalResultSearch(DefineByRun(space), metric=list(space.objectives),
                                 mode=list(space.modes), sampler=sampler)
    parent_params = {"space_file": request.space_file, "sampler": space.sampler,
                     "seed": space.seed, "num_samples": space.num_samples,
                     "objectives": ",".join(space.objectives), "model": space.fixed["model"],
                     "methods": ",".join(space.methods), "max_failures": space.max_failures,
                     "scheduler": space.scheduler.name,
                     "rungs": ",".join(str(r) for r in space.rungs)}
    callbacks = [
        TrackingCallback(request.tracking_uri, request.name, space.objectives, space.modes,
                         space.fixed, parent_params, space.source),
        ProgressPrinter(space.objectives, space.modes, space.num_samples),
    ]
    run_config = tune.RunConfig(
        name=request.name, storage_path=request.storage_path, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0,
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=build_scheduler(request),
        num_samples=space.num_samples, max_concurrent_trials=max_concurrent,
        reuse_actors=True, trial_dirname_creator=trial_dirname,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def build_scheduler(request: SearchRequest) -> Any:
    """The TrialScheduler: None (Ray's FIFO: every trial runs its full budget) or MOASHA."""
    space = request.space
    if not space.scheduler.enabled:
        return None
    from autoprune.search.moasha import MultiObjectiveASHA

    return MultiObjectiveASHA(space.objectives, space.modes, space.rungs,
                              space.scheduler.reduction_factor,
                              state_dir=request.experiment_path)


def make_trainable(space: SearchSpace) -> Any:
    """The trial function with the fixed config, the rungs and the space's resources."""
    from ray import tune

    from autoprune.search.trainable import run_trial

    resources = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    trainable = tune.with_parameters(run_trial, fixed=dict(space.fixed), rungs=space.rungs)
    return tune.with_resources(trainable, resources)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join ``address``, or start a quiet local Ray with all this machine's CPUs."""
    import ray

    if ray.is_initialized():  # the caller (a test, a notebook) owns the session
        yield
        return
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **quiet)
        else:
            # "local": a new Ray of our own, even where `ray start` left a cluster running
            ray.init(address="local", num_cpus=os.cpu_count() or 1,
                     include_dashboard=False, **quiet)
    except ConnectionError as exc:
        raise UserError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """Fail fast on a wrong ``host:port`` (Ray itself retries for minutes)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        return  # "auto" and friends: Ray finds the cluster
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


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
    need = space.resources
    if local and (need.cpu > cpus or need.gpu > gpus):
        raise UserError(f"resources: a trial needs {need.cpu:g} CPU and {need.gpu:g} GPU, "
                        f"this machine has {cpus:g} CPU and {gpus:g} GPU")
    fit = math.floor(cpus / need.cpu) if need.cpu else 1
    if need.gpu:
        fit = min(fit, math.floor(gpus / need.gpu + 1e-9))
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
