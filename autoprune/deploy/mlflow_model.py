"""Trained networks as MLflow models, and registry versions of them.

Every completed trial's network is logged as the run's MLflow model named ``model``
(``runs:/<run_id>/model``) with MLflow's PyTorch flavour in its ``pt2`` form
(``torch.export``): loading it needs torch and MLflow only, not autoprune, and runs no
pickled code. Its signature comes from the dataset's input shape with a free batch
dimension; its pip requirements are the versions this environment was installed with
(``requirements.lock``). The run keeps ``model.pt`` (autoprune's own file) beside it.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.search.store import TRACKING_ENV

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_NAME = "model"
MODEL_TAG = "autoprune.model_uri"
"""Set on a trial's run once its network is logged: the ``models:/m-...`` URI."""
MODEL_ERROR_TAG = "autoprune.model_error"
REQUIREMENTS = ("torch", "numpy")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,255}")


def requirements() -> list[str]:
    """Pinned pip requirements of a logged network (mlflow adds itself)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


@contextmanager
def tracking(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` (and ``experiment_id``) for the block only.

    ``mlflow.pytorch.log_model(run_id=...)`` creates the logged model in the *active*
    experiment, not the run's: the run's experiment is made active meanwhile. The previous
    globals are put back as they were (unset included), which MLflow's setters cannot do,
    and so is ``MLFLOW_TRACKING_URI``, which MLflow's setter exports for subprocesses: left
    set, it would choose the store of every later command in this process (and of the Ray
    workers it starts).
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    before = (getattr(utils, "_tracking_uri", None), getattr(fluent, "_active_experiment_id",
                                                              None))
    env_before = os.environ.get(TRACKING_ENV)
    mlflow.set_tracking_uri(uri)
    if experiment_id is not None:
        fluent._active_experiment_id = experiment_id  # type: ignore[assignment]
    try:
        yield
    finally:
        utils._tracking_uri, fluent._active_experiment_id = before
        if env_before is None:
            os.environ.pop(TRACKING_ENV, None)
        else:
            os.environ[TRACKING_ENV] = env_before


def log_network(uri: str, run_id: str, model: nn.Module,
                input_shape: tuple[int, ...]) -> str:
    """Log ``model`` as the MLflow model of run ``run_id``; returns its ``models:/`` URI."""
    import mlflow
    from mlflow.models import infer_signature

    model = model.eval()
    example = np.random.default_rng(0).standard_normal((2, *input_shape)).astype(np.float32)
    with torch.inference_mode():
        output = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    with tracking(uri, client.get_run(run_id).info.experiment_id):
        info = mlflow.pytorch.log_model(
            model, name=MODEL_NAME, run_id=run_id, input_example=example, signature=signature,
            pip_requirements=requirements(), serialization_format="pt2")
    model_uri = f"models:/{info.model_id}"
    client.set_tag(run_id, MODEL_TAG, model_uri)
    return model_uri


def log_model_file(uri: str, run_id: str, model_file: Path, trust: Sequence[str] = ()) -> str:
    """Log the network in autoprune's ``model.pt`` as run ``run_id``'s MLflow model
    (``trust``: the modules that may rebuild the user's own network, as for ``load_model``)."""
    from autoprune.surgery.serialize import load_model

    model = load_model(model_file, trust=trust)
    shape = getattr(model, "autoprune_input_shape", None)
    if not shape:
        raise UserError(f"{model_file} does not record its input shape (written by an "
                        "older autoprune): rerun the trial's config to log its network")
    return log_network(uri, run_id, model, tuple(shape))


def logged_model_uri(client: MlflowClient, run_id: str) -> str | None:
    """The ``models:/`` URI of run ``run_id``'s logged network, if it has one."""
    run = client.get_run(run_id)
    tagged = run.data.tags.get(MODEL_TAG)
    if tagged:
        return tagged
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
    return f"models:/{models[0].model_id}" if models else None


def ensure_logged(client: MlflowClient, uri: str, run_id: str, trust: Sequence[str] = ()) -> str:
    """Run ``run_id``'s network as an MLflow model, logged now from its ``model.pt``
    artifact when the search could not (an older search, a server that was away; the user's
    own network is rebuilt for that only from a module in ``trust``)."""
    found = logged_model_uri(client, run_id)
    if found:
        return found
    with tempfile.TemporaryDirectory(prefix="autoprune-model-") as folder:
        try:
            path = client.download_artifacts(run_id, "model.pt", folder)
        except Exception as exc:  # noqa: BLE001 - any store error means: not there
            raise UserError(f"run {run_id} has no model.pt artifact ({exc})") from None
        return log_model_file(uri, run_id, Path(path), trust)


def register(client: MlflowClient, uri: str, run_id: str, name: str, alias: str,
             tags: Mapping[str, str], trust: Sequence[str] = ()) -> dict[str, Any]:
    """Register run ``run_id``'s network as a new version of ``name`` and point ``alias``
    at it. Returns the version, alias and ``models:/NAME@alias`` URI."""
    import mlflow

    check_name("--register", name)
    check_name("--alias", alias)
    if re.fullmatch(r"v\d+|latest", alias, flags=re.IGNORECASE):
        raise UserError(f"--alias {alias!r} is reserved by MLflow (v<N>, latest): choose "
                        "another, e.g. picked")
    source = ensure_logged(client, uri, run_id, trust)
    with tracking(uri), redirect_stderr(io.StringIO()):  # MLflow prints what we return
        version = mlflow.register_model(source, name, tags=dict(tags))
    client.set_registered_model_alias(name, alias, version.version)
    return {"registered_model": name, "version": int(version.version), "alias": alias,
            "model_uri": f"models:/{name}@{alias}", "source": source}


def check_name(flag: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise UserError(f"{flag} {value!r}: use letters, digits, '_', '-' and '.' only")


__all__ = ["MODEL_ERROR_TAG", "MODEL_NAME", "MODEL_TAG", "ensure_logged", "log_model_file",
           "log_network", "logged_model_uri", "register", "requirements"]
